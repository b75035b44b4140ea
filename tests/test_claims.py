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
T_975_DF4 = 2.7764451051977987  # tables: 2.776
T_90_DF2 = 1.8856180831641267  # 90 % quantile, 2 degrees of freedom (tables: 1.886): an 80 % interval


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
    assert out["differences"] == [2.0, 3.0, 6.0]
    # No bootstrap: over 3 pairs it has 10 distinct resamples and an interval narrower than 3 numbers allow.
    assert not any(key.startswith("bootstrap") for key in out)


def test_paired_difference_edge_cases():
    one = claims.paired_difference([5.0], [3.0])
    assert one["n"] == 1 and one["mean"] == 2.0 and math.isnan(one["t_low"]) and math.isnan(one["p_value"])
    constant = claims.paired_difference([5, 6], [3, 4])
    assert (constant["t_low"], constant["t_high"], constant["p_value"]) == (2.0, 2.0, 0.0)
    assert claims.paired_difference([1, 2], [1, 2])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        claims.paired_difference([1, 2], [1, 2, 3])
    assert claims.t_quantile(0.975, 1) == pytest.approx(T_975_DF1)


@pytest.mark.parametrize("low, high, higher, differences, expected", [
    (1.0, 3.0, True, (2, 2, 1), "holds"), (-3.0, -1.0, True, (-2, -2, -1), "reversed"),
    (-1.0, 1.0, True, (1, -1, 0.5), "not supported"), (-3.0, -1.0, False, (-2, -2, -1), "holds"),
    (1.0, 3.0, False, (2, 2, 1), "reversed"), (0.0, 2.0, True, (1, 1, 0.5), "not supported"),
    # The interval excludes 0 but one seed is not on its side (a tie counts as not on it).
    (1.0, 3.0, True, (2, 2, 0), "not supported"), (1.0, 3.0, True, (3, 3, -1), "not supported"),
    (-3.0, -1.0, True, (-2, -2, 0), "not supported"), (-3.0, -1.0, False, (-3, -3, 1), "not supported"),
    (math.nan, math.nan, True, (2,), "no data"), (math.nan, math.nan, True, (), "no data")])
def test_verdict_needs_the_interval_and_every_seed(low, high, higher, differences, expected):
    assert claims.verdict(low, high, higher, differences) == expected


def test_three_seeds_one_off_side_interval_excludes_zero_yet_not_supported():
    """Differences 2, 2, 0: mean 4/3, std 2/√3, standard error 2/3, t = 2. At 80 % (t_{0.9, 2} =
    1.886) the interval excludes 0, but the third seed gained nothing: not supported. At 95 %
    (4.303) it contains 0 anyway: over 3 seeds t with a seed off the claimed side is at most
    n − 1 = 2, so there the sign rule is implied by the interval; from 5 seeds on it is not."""
    mean, se = 4 / 3, 2 / 3
    wide = claims.paired_difference([82, 87, 90], [80, 85, 90], confidence=0.80)
    assert (wide["t_low"], wide["t_high"]) == pytest.approx((mean - T_90_DF2 * se, mean + T_90_DF2 * se))
    assert wide["t_low"] == pytest.approx(0.0762546) and wide["t_low"] > 0
    assert claims.verdict(wide["t_low"], wide["t_high"], True, wide["differences"]) == "not supported"
    agree = claims.paired_difference([82, 87, 91], [80, 85, 90], confidence=0.80)  # differences 2, 2, 1
    assert agree["t_low"] > 0 and claims.verdict(agree["t_low"], agree["t_high"], True, agree["differences"]) == "holds"
    usual = claims.paired_difference([82, 87, 90], [80, 85, 90])
    assert usual["t_low"] == pytest.approx(mean - T_975_DF2 * se) and usual["t_low"] < 0
    # The bound n − 1 against t_{0.975, n−1}: above it for 3 and 4 seeds, below it from 5 on.
    assert [claims.t_quantile(0.975, n - 1) > n - 1 for n in (3, 4, 5)] == [True, True, False]


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
    # Every seed on the claimed side, and the column that says so.
    assert final.loc["finetune", ["differences", "on_claimed_side"]].tolist() == ["20 15 10", 3]
    assert final.loc["lwf", "verdict"] == "not supported"  # differences -10, -5, 0
    assert final.loc["lwf", "on_claimed_side"] == 0
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


def test_five_seeds_one_seed_against_the_claim_is_not_supported(tmp_path):
    """Five seeds, 95 %: the t-interval excludes 0 while one seed's difference has the other sign.

    finetune: differences 10, 10, 10, 10, −1: mean 7.8, variance (4 · 2.2² + 8.8²)/4 = 24.2,
    standard error √(24.2/5) = 2.2, interval 7.8 ± 2.776 · 2.2 = [1.69, 13.91]; seed 4 lost: not
    supported. lwf: 10, 10, 10, 10, 1: mean 8.2, variance 16.2, se 1.8, [3.20, 13.20], every seed
    gained: holds. ewc: −10 × 4, −1: every seed lost: reversed."""
    root = tmp_path / "runs"
    paper = [80, 85, 90, 80, 85]
    rivals = {"finetune": [70, 75, 80, 70, 86], "lwf": [70, 75, 80, 70, 84], "ewc": [90, 95, 100, 90, 86]}
    for seed, final in enumerate(paper):
        write_run(root, "moe-adapters", seed, two_task(final))
        for method, finals in rivals.items():
            write_run(root, method, seed, two_task(finals[seed]))
    claim = claims.CLAIMS[0]  # higher final accuracy than each baseline
    table = claims.claims_table(results.load_runs(root), {}, [claim]).dropna(subset=["benchmark"])
    rows = table.set_index("rival")
    assert rows.loc["finetune", "t_low"] == pytest.approx(7.8 - T_975_DF4 * 2.2)
    assert rows.loc["finetune", "t_low"] == pytest.approx(1.6918208) and rows.loc["finetune", "t_low"] > 0
    assert rows.loc["finetune", "verdict"] == "not supported"  # the interval alone would say holds
    assert rows.loc["finetune", ["n", "on_claimed_side", "verdict"]].tolist() == [5, 4, "not supported"]
    assert rows.loc["finetune", "differences"] == "10 10 10 10 -1"
    assert rows.loc["lwf", "t_low"] == pytest.approx(8.2 - T_975_DF4 * 1.8)
    assert rows.loc["lwf", ["n", "on_claimed_side", "verdict"]].tolist() == [5, 5, "holds"]
    assert rows.loc["ewc", ["on_claimed_side", "verdict"]].tolist() == [0, "reversed"]


def test_headline_counts_only_comparisons_that_were_run(claim_runs):
    """Unscheduled ablations (n = 0) stay listed, apart from the table, and out of the verdict tally.

    MoE claims on the fixture: 10 rival rows on av-events (5 rivals × 2 metrics), 2 domain rows
    without runs, 6 ablation rows of which only no-kd ran: 18 rows, 7 with no paired seed. Of
    the 11 run: holds finetune × 2; reversed ewc × 2; not supported lwf × 2, lwf~cosine-frozen × 2,
    no-kd; no data (one paired seed) replay × 2."""
    table = claims.claims_table(claim_runs, {"domain_incremental": ["stress"]}, MOE_CLAIMS, info=info)
    assert len(table) == 18 and (table["n"] == 0).sum() == 7
    summary = ("Profile tiny; seeds 0 1 2; 11 comparisons run: 2 holds, 5 not supported, 2 reversed, "
               "2 no data (a single paired seed); 7 not run (no paired seed).")
    markdown = claims.claims_markdown(table)
    assert summary in markdown
    assert claims.tally_text(table) == summary.split("; ", 2)[2].rstrip(".")
    # The not-run comparisons: in a short list, not in the table (no row with n = 0).
    lines = markdown.splitlines()
    assert not [line for line in lines if line.startswith("| ") and "| 0 |" in line]
    listed = [line for line in lines if line.startswith("- ") and "not run" not in line]
    assert any("`moe-adapters~single-adapter`: Class-incremental av-events (standard)" in line for line in listed)
    assert any(line.startswith("- lower forgetting than each baseline: Domain-incremental (no runs)")
               for line in listed)
    assert len(listed) == 7


def test_markdown_states_n_and_the_seeds_on_the_claimed_side(claim_runs):
    table = claims.claims_table(claim_runs, {"domain_incremental": ["stress"]}, MOE_CLAIMS, info=info)
    markdown = claims.claims_markdown(table)
    header = next(line for line in markdown.splitlines() if line.startswith("| Claim"))
    assert "| n |" in header and "| Seeds on claimed side |" in header and "bootstrap" not in markdown
    # finetune: differences 20, 15, 10; 15 ± 4.303 · 5/√3 = [2.58, 27.42]; t = 3√3, p = 1 − t/√(t² + 2).
    assert ("| higher final accuracy than each baseline | Class-incremental | av-events | standard | finetune | 3 "
            "| +15.0 ± 5.0 | > 0 | 3/3 | [+2.6, +27.4] | 0.035 | holds |") in markdown
    assert "| lwf | 3 | -5.0 ± 5.0 | > 0 | 0/3 |" in markdown  # differences -10, -5, 0: none gained
    assert "| replay | 1 | +30.0 | > 0 | 1/1 | – | – | no data |" in markdown  # one seed: no interval
    # The rule is stated where the table is read.
    assert "every seed's difference has the claimed sign" in markdown


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
    assert comm.startswith("intro\n<!-- claims:comm:start -->\nGenerated by")
    assert "0 comparisons run: 0 holds, 0 not supported, 0 reversed, 0 no data" in comm and "not run" in comm
    assert main(argv) == 0 and "nothing (already up to date)" in capsys.readouterr().out


T_80_DF2 = 1.0606601717798212  # Student's t, 80 % quantile, 2 degrees of freedom (tables: 1.061)


def test_detectable_difference_is_where_the_noncentral_t_reaches_the_power():
    from scipy import stats

    d = claims.detectable_difference(4.0, 3)
    # at that difference the paired t statistic exceeds t(0.975, 2) with probability 0.8, exactly
    assert stats.nct.sf(T_975_DF2, 2, d * math.sqrt(3) / 4.0) == pytest.approx(0.8, abs=1e-6)
    # the textbook approximation (t quantiles instead of the noncentral t) is close, and below it
    approximate = (T_975_DF2 + T_80_DF2) * 4.0 / math.sqrt(3)
    assert approximate < d < 1.1 * approximate
    assert claims.detectable_difference(8.0, 3) == pytest.approx(2 * d, rel=1e-5)  # linear in the std
    assert claims.detectable_difference(4.0, 10) < claims.detectable_difference(4.0, 5) < d
    assert math.isnan(claims.detectable_difference(4.0, 1)) and math.isnan(claims.detectable_difference(0.0, 3))
    n = claims.seeds_needed(4.0)  # the fewest seeds detecting 5 points
    assert claims.detectable_difference(4.0, n) <= 5.0 < claims.detectable_difference(4.0, n - 1)


def test_power_table_pools_the_differences_std_per_benchmark(claim_runs):
    table = claims.claims_table(claim_runs, {"domain_incremental": ["stress"]}, MOE_CLAIMS, info=info)
    powers = claims.power_table(table)
    final = powers[(powers.metric == "final_accuracy") & (powers.scenario == "class_incremental")].iloc[0]
    measured = table[(table.metric == "final_accuracy") & (table.scenario == "class_incremental") & (table.n >= 2)]
    # final accuracy, n >= 2: finetune (std 5), lwf (5), ewc (2.89), lwf~cosine-frozen (n 2), no-kd (n 2)
    assert final["comparisons"] == len(measured) == 5 and final["n"] == 3
    assert final["pooled_std"] == pytest.approx(math.sqrt((measured["effect_std"] ** 2).mean()))
    assert final["detectable"] == pytest.approx(claims.detectable_difference(final["pooled_std"], 3))
    assert "What these seeds can detect" in claims.claims_markdown(table)


def six_seed_runs(root, paper, rivals):
    for seed, final in enumerate(paper):
        write_run(root, "moe-adapters", seed, two_task(final))
        for method, finals in rivals.items():
            write_run(root, method, seed, two_task(finals[seed]))
    return results.load_runs(root)


def test_replication_compares_the_verdicts_of_two_seed_sets(tmp_path):
    # moe-adapters vs finetune: +10 on every seed (holds twice); vs lwf: +10 on seeds 0-2, -10 on
    # 3-5 (holds, then reversed: a flip); vs ewc: +10, -10, +5 then +10, +10, +10 (not supported, holds).
    runs = six_seed_runs(tmp_path / "runs", [80] * 6, {"finetune": [70] * 6, "lwf": [70, 70, 70, 90, 90, 90],
                                                       "ewc": [70, 90, 75, 70, 70, 70]})
    claim = claims.CLAIMS[0]  # higher final accuracy than each baseline
    found = claims.replicate(runs, None, {}, [claim])
    assert found["sets"] == [[0, 1, 2], [3, 4, 5]]
    moe = found["papers"]["moe-adapters"]
    assert (moe["compared"], moe["agree"], moe["flips"]) == (3, 1, 1)
    assert moe["share"] == pytest.approx(1 / 3) and moe["decisive"] == pytest.approx(5 / 6)
    changes = found["changes"].set_index("rival")
    assert changes.loc["lwf", ["verdict_a", "verdict_b"]].tolist() == ["holds", "reversed"]
    assert changes.loc["ewc", ["verdict_a", "verdict_b"]].tolist() == ["not supported", "holds"]
    text = claims.replication_text(found)
    assert "`moe-adapters`: 1 of 3 verdicts agree (33%); 1 holds <-> reversed; decisive verdicts 83%" in text
    assert "vs `lwf`" in text and "holds (+10.0) -> reversed (-10.0)" in text
    assert claims.replicate(runs, [[0, 2, 4], [1, 3, 5]], {}, [claim])["sets"] == [[0, 2, 4], [1, 3, 5]]
    for bad, message in (([[0, 1], [1, 2]], "disjoint"), ([[0], [1, 2]], "at least 2"), ([[0, 1], [6, 7]], "no runs")):
        with pytest.raises(ValueError, match=message):
            claims.replicate(runs, bad, {}, [claim])


def test_cli_claims_replicate_prints_the_agreement_and_writes_nothing(tmp_path, capsys):
    from mmcl.cli import main

    six_seed_runs(tmp_path / "runs", [80] * 4, {"finetune": [70] * 4})
    figures = tmp_path / "figures"
    assert main(["claims", "--profile", "tiny", "--output-dir", str(tmp_path / "runs"), "--figures-dir",
                 str(figures), "--replicate", "--sets", "0 1", "2,3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Replication: the claims on seeds 0 1 against seeds 2 3.") and "`moe-adapters`" in out
    assert not figures.exists()
    assert main(["claims", "--profile", "tiny", "--output-dir", str(tmp_path / "runs"), "--replicate",
                 "--sets", "0 1", "1 2"]) == 2
    assert "--replicate: replication seed sets must be disjoint" in capsys.readouterr().err
