"""mmcl.claims: paired statistics against hand-computed values, verdicts on fake run folders whose
numbers are known, the claims files and the docs blocks rewritten from them."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from test_results import write_run

from mmcl import claims, results
from mmcl.config import ConfigError, load_config

T_975_DF2 = 4.302652729749464  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)
T_975_DF1 = 12.706204736174707


def test_paired_difference_matches_hand_computed_values():
    out = claims.paired_difference([3, 5, 10], [1, 2, 4])  # differences 2, 3, 6
    mean, std = 11 / 3, math.sqrt(13 / 3)  # squared deviations 25/9 + 4/9 + 49/9 = 26/3, over n - 1 = 2
    half = T_975_DF2 * std / math.sqrt(3)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(mean)
    assert out["std"] == pytest.approx(std)
    assert (out["t_low"], out["t_high"]) == pytest.approx((mean - half, mean + half))
    t = mean / (std / math.sqrt(3))
    assert out["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # two-sided p of t with 2 df, closed form
    # Bootstrap of 3 pairs: the smallest and largest possible means (2 and 6) each have
    # probability 1/27 > 2.5 %, so the percentile interval is exactly [2, 6].
    assert (out["bootstrap_low"], out["bootstrap_high"]) == (2.0, 6.0)
    assert claims.paired_difference([3, 5, 10], [1, 2, 4]) == out  # fixed RNG seed


def test_paired_difference_edge_cases():
    one = claims.paired_difference([5.0], [3.0])
    assert one["n"] == 1 and one["mean"] == 2.0 and math.isnan(one["t_low"]) and math.isnan(one["p_value"])
    constant = claims.paired_difference([5, 6], [3, 4])
    assert (constant["t_low"], constant["t_high"], constant["p_value"]) == (2.0, 2.0, 0.0)
    assert claims.paired_difference([1, 2], [1, 2])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        claims.paired_difference([1, 2], [1, 2, 3])
    assert claims.t_quantile(0.975, 1) == pytest.approx(T_975_DF1)


@pytest.mark.parametrize("low, high, higher, expected", [
    (1.0, 3.0, True, "holds"), (-3.0, -1.0, True, "reversed"), (-1.0, 1.0, True, "not supported"),
    (-3.0, -1.0, False, "holds"), (1.0, 3.0, False, "reversed"), (0.0, 2.0, True, "not supported"),
    (math.nan, math.nan, True, "no data")])
def test_verdict(low, high, higher, expected):
    assert claims.verdict(low, high, higher) == expected


def two_task(final: float) -> list[list[float]]:
    """Final accuracy ``final`` and forgetting ``100 - final`` (task 0 from 100 to ``final``)."""
    return [[100, 0], [final, final]]


PAPER = {0: 80, 1: 85, 2: 90}


@pytest.fixture
def claim_runs(tmp_path):
    root = tmp_path / "runs"
    for seed, final in PAPER.items():
        write_run(root, "moe-adapters", seed, two_task(final))
    for method, finals in {"finetune": [60, 70, 80], "lwf": [90, 90, 90], "ewc": [95, 100, 100],
                           "joint": [100, 100, 100]}.items():
        for seed, final in enumerate(finals):
            write_run(root, method, seed, two_task(final))
    write_run(root, "replay", 0, two_task(50))  # one seed only
    write_run(root, "moe-adapters", 0, two_task(70), variant="no-kd")
    write_run(root, "moe-adapters", 1, two_task(80), variant="no-kd")
    write_run(root, "lwf", 0, two_task(10), variant="no-distillation")  # another method's ablation: no rival
    write_run(root, "finetune", 0, two_task(0), difference={"train.epochs": 1})  # other configuration: no rival
    write_run(root, "lwf", 0, two_task(99), variant="cosine-frozen")  # a comparison variant (see info below)
    write_run(root, "lwf", 1, two_task(99), variant="cosine-frozen")
    # An appendix benchmark: measured nowhere in the claims.
    for seed in range(3):
        write_run(root, "moe-adapters", seed, two_task(10), scenario="domain_incremental", benchmark="stress")
        write_run(root, "finetune", seed, two_task(90), scenario="domain_incremental", benchmark="stress")
    return results.load_runs(root)


def info(method):
    family, _ = claims.method_info(method)
    return family, ({"cosine-frozen": {}} if method == "lwf" else {})


MOE_CLAIMS = [c for c in claims.CLAIMS if c.paper == "moe-adapters"]


def test_claims_table_verdicts_on_known_runs(claim_runs):
    table = claims.claims_table(claim_runs, {"domain_incremental": ["stress"]}, MOE_CLAIMS, info=info)
    final = table[(table.metric == "final_accuracy") & (table.scenario == "class_incremental")
                  & ~table.rival.str.startswith("moe-adapters~")].set_index("rival")
    # Rivals: no joint (a reference), no other method's ablation, no other configuration.
    assert list(final.index) == ["finetune", "ewc", "lwf", "lwf~cosine-frozen", "replay"]
    assert final.loc["finetune", "effect"] == pytest.approx(15.0)  # differences 20, 15, 10
    assert final.loc["finetune", "effect_std"] == pytest.approx(5.0)
    assert final.loc["finetune", "t_low"] == pytest.approx(15 - T_975_DF2 * 5 / math.sqrt(3))
    assert final.loc["finetune", "verdict"] == "holds"
    assert final.loc["lwf", "verdict"] == "not supported"  # differences -10, -5, 0
    assert final.loc["ewc", "verdict"] == "reversed"  # differences -15, -15, -10
    assert final.loc["replay", ["n", "seeds", "verdict"]].tolist() == [1, "0", "no data"]
    assert final.loc["lwf~cosine-frozen", ["n", "seeds"]].tolist() == [2, "0 1"]
    assert set(final["direction"]) == {"> 0"}
    forgetting = table[(table.metric == "forgetting") & (table.rival == "finetune")
                       & (table.scenario == "class_incremental")].iloc[0]
    assert forgetting["effect"] == pytest.approx(-15.0) and forgetting["direction"] == "< 0"
    assert forgetting["verdict"] == "holds"  # less forgetting than fine-tuning, on every seed
    ablation = table[table.rival == "moe-adapters~no-kd"].iloc[0]
    assert ablation[["effect", "n", "seeds"]].tolist() == [7.5, 2, "0 1"]  # full - variant: 10, 5
    assert ablation["t_high"] == pytest.approx(7.5 + T_975_DF1 * math.sqrt(12.5) / math.sqrt(2))
    assert ablation["verdict"] == "not supported"
    assert table[table.rival == "moe-adapters~single-adapter"]["verdict"].tolist() == ["no data"]  # not run
    # Domain-incremental: only the appendix benchmark was run, so every rival claim there has no data.
    domain = table[table.scenario == "domain_incremental"]
    assert len(domain) == 2 and set(domain["verdict"]) == {"no data"} and domain["benchmark"].isna().all()
    assert set(table["verdict"]) <= set(claims.VERDICTS)
    assert set(table.loc[table.n > 0, "profile"]) == {"tiny"}


def test_real_registry_families_make_references_no_rivals(claim_runs):
    rivals = claims.rival_labels(claim_runs[claim_runs.scenario == "class_incremental"], "moe-adapters")
    assert rivals == ["finetune", "ewc", "lwf", "replay"]


def test_every_ablation_claim_names_a_declared_variant():
    from mmcl.methods import method_class

    for claim in claims.CLAIMS:
        cls = method_class(claim.paper)
        assert cls.family == "paper"
        if isinstance(claim, claims.AblationClaim):
            assert claim.variant in cls.ablations, claim
        else:
            assert set(claim.scenarios) <= set(cls.compatible_scenarios), claim


def test_write_claims_and_update_docs_touch_only_the_block(claim_runs, tmp_path):
    paths = claims.write_claims(claim_runs, tmp_path / "figures", {"domain_incremental": ["stress"]}, MOE_CLAIMS)
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == claims.COLUMNS
    assert csv["code"].str.startswith(results.code_version_text("a1b2c3d4e5f6")).all() or csv["n"].eq(0).any()
    markdown = paths["md"].read_text()
    assert "| finetune | 3 | +15.0 ± 5.0 | > 0 |" in markdown
    assert "Code: source a1b2c3d4e5f6 (commit 1234567, dirty)" in markdown
    assert "Profile tiny; seeds 0 1 2;" in markdown

    docs = tmp_path / "docs"
    docs.mkdir()
    before = "# MoE\n\nHand-written text.\n\n## Results\n\n"
    after = "\n\n## Cost\n\nMore text.\n"
    page = docs / "moe.md"
    page.write_text(before + "<!-- claims:moe-adapters:start -->\nold\n<!-- claims:moe-adapters:end -->" + after)
    (docs / "other.md").write_text("no block here\n")
    assert claims.update_docs(paths["csv"], docs) == [page]
    text = page.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "\nold\n" not in text and "| finetune | 3 | +15.0 ± 5.0 | > 0 |" in text
    assert "Generated by `mmcl claims --update-docs`" in text and "Profile tiny; seeds 0 1 2;" in text
    assert "Code: source a1b2c3d4e5f6 (commit 1234567, dirty)" in text
    assert claims.update_docs(paths["csv"], docs) == []  # idempotent
    assert page.read_text() == text and (docs / "other.md").read_text() == "no block here\n"


def test_method_pages_hold_claims_blocks_and_no_hand_typed_results():
    docs = Path(__file__).resolve().parent.parent / "docs" / "methods"
    for page, method in (("moe_adapters.md", "moe-adapters"), ("comm.md", "comm")):
        text = (docs / page).read_text()
        assert text.count(f"<!-- claims:{method}:start -->") == 1
        assert text.count(f"<!-- claims:{method}:end -->") == 1
    assert "| av-events (class-IL, 4 × 7) |" not in (docs / "moe_adapters.md").read_text()


def test_appendix_benchmarks_get_their_own_table(claim_runs, tmp_path):
    written = results.write_tables(claim_runs, tmp_path, {"domain_incremental": ["stress"]})
    assert "appendix_domain_incremental" in written and "main_domain_incremental" not in written
    appendix = pd.read_csv(written["appendix_domain_incremental"]["csv"])
    assert set(appendix["benchmark"]) == {"stress"} and set(appendix["method"]) == {"finetune", "moe-adapters"}
    assert "stress" not in pd.read_csv(written["main_class_incremental"]["csv"])["benchmark"].tolist()


def test_profiles_declare_appendix_and_seeds(smoke_config):
    from mmcl import reproduce

    assert smoke_config.scenarios["domain_incremental"].appendix == ["multilingual-emotion-stress"]
    assert results.appendix_benchmarks(smoke_config) == {"domain_incremental": ["multilingual-emotion-stress"]}
    jobs = reproduce.sweep_jobs(smoke_config, "domain_incremental", ["finetune"], seeds=[0])
    assert [job["benchmark"] for job in jobs] == ["multilingual-emotion", "multilingual-emotion-stress"]
    assert load_config("tiny").runtime.seeds == [0, 1, 2] and load_config("paper").runtime.seeds == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"scenarios.domain_incremental.appendix.0: 'nope' is not among"):
        load_config("smoke", ["scenarios.domain_incremental.appendix=[nope]"])
    with pytest.raises(ConfigError, match=r"appendix.0: 'multilingual-emotion' is the main benchmark"):
        load_config("smoke", ["scenarios.domain_incremental.appendix=[multilingual-emotion]"])


def test_cli_claims_writes_the_files_and_updates_the_docs(claim_runs, tmp_path, capsys):
    from mmcl.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "comm.md").write_text("intro\n<!-- claims:comm:start -->\n<!-- claims:comm:end -->\n")
    root = Path(claim_runs["run_dir"].iloc[0]).parents[4]  # <root>/<profile>/<scenario>/<benchmark>/<method>/seed<k>
    argv = ["claims", "--profile", "tiny", "--output-dir", str(root), "--figures-dir", str(tmp_path / "figures"),
            "--update-docs", "--docs-dir", str(docs)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "holds" in out and f"rewritten: {docs / 'comm.md'}" in out
    assert (tmp_path / "figures" / "claims.md").is_file()
    # COMM was not run: every COMM claim says so.
    comm = (docs / "comm.md").read_text()
    assert comm.startswith("intro\n<!-- claims:comm:start -->\nGenerated by") and "| no data |" in comm
    assert main(argv) == 0 and "nothing (already up to date)" in capsys.readouterr().out
