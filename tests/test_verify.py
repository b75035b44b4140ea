"""Expected results with tolerances (mmcl.verify, `mmcl verify`) on real smoke runs: the written
file holds each main-table mean with max(2 x seed std, 1 point), hand-checked from metrics.json;
a reproduction within tolerance passes, one outside fails, a row it lacks is missing."""
from __future__ import annotations

import json
import statistics

import pytest
import yaml

from mmcl import reproduce, results, verify
from mmcl.cli import main
from mmcl.config import ConfigError, load_config


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, mmcl_cache):
    root = tmp_path_factory.mktemp("verify")
    config = load_config("smoke", [f"runtime.output_dir={root}"])
    reproduce.run_sweep(config, "class_incremental", methods=["zero-shot", "finetune"], seeds=[0, 1])
    return root


def _final_accuracies(root, method):
    return [json.loads((root / f"smoke/class_incremental/av-events/{method}/seed{s}/metrics.json").read_text())
            ["modes"]["standard"]["final_accuracy"] for s in (0, 1)]


def test_each_seed_of_a_cell_runs_on_its_own_backbone(smoke_runs):
    # model.pretrain.per_run_seed (on in smoke and tiny): seed k's backbone is pre-trained with
    # data.benchmark_seed + k, so the seeds' spread includes the backbone's; the manifests name it.
    runs = results.load_runs(smoke_runs / "smoke")
    assert len(runs) == 4
    for method, cell in runs.groupby("method"):
        by_seed = dict(zip(cell["seed"], cell["backbone_sha256"]))
        assert sorted(by_seed) == [0, 1] and by_seed[0] != by_seed[1], method
    assert runs.groupby("seed")["backbone_sha256"].nunique().tolist() == [1, 1]  # one per seed, shared by methods


def test_every_seed_shares_one_backbone_when_asked(tmp_path):
    from mmcl import engine
    from mmcl.models.pretraining import pretraining_seed, tiny_cache_path

    per_seed = load_config("smoke")
    shared = load_config("smoke", ["model.pretrain.per_run_seed=false"])
    seeded = [c.model_copy(update={"seed": s}) for c in (per_seed, shared) for s in (0, 1, 2)]
    assert [pretraining_seed(c) for c in seeded] == [per_seed.data.benchmark_seed + s for s in (0, 1, 2)] \
        + [per_seed.data.benchmark_seed] * 3
    # seed 0's backbone is the benchmark seed's either way: the same cache file, the same weights
    assert len({tiny_cache_path(c) for c in seeded}) == 3 and tiny_cache_path(seeded[0]) == tiny_cache_path(seeded[4])
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "model.pretrain.per_run_seed=false"])
    run = engine.run(config, "class_incremental", "zero-shot", seed=1)
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["backbone"]["pretrained"] == str(tiny_cache_path(seeded[0]))


def test_written_expectations_are_seed_means_with_a_spread_tolerance(smoke_runs, tmp_path, capsys):
    path = tmp_path / "smoke.yaml"
    assert main(["verify", "--profile", "smoke", "--runs", str(smoke_runs), "--expected", str(path),
                 "--write-expected"]) == 0
    document = verify.read_expected(path)
    assert document["profile"] == "smoke" and document["command"].startswith("mmcl verify --write-expected")
    entries = {(e["method"], e["metric"]): e for e in document["results"] if e["mode"] == "standard"}
    assert set(entries) == {(m, k) for m in ("zero-shot", "finetune") for k in ("final_accuracy", "forgetting")}
    values = _final_accuracies(smoke_runs, "finetune")
    finetune = entries["finetune", "final_accuracy"]
    assert finetune["expected"] == round(statistics.mean(values), 2) and finetune["seeds"] == 2
    assert finetune["tolerance"] == round(max(2 * statistics.stdev(values), 1.0), 2)
    assert all(e["source"] == "measured" and e["benchmark"] == "av-events" for e in document["results"])
    # The same runs pass; the CLI prints only the summary line when everything passes.
    capsys.readouterr()
    assert main(["verify", "--profile", "smoke", "--runs", str(smoke_runs), "--expected", str(path)]) == 0
    out = capsys.readouterr().out
    n = len(document["results"])
    assert out.strip().endswith(f"{n} of {n} expected numbers reproduced within tolerance (0 fail, 0 missing)")


def test_outside_the_tolerance_fails_and_an_absent_row_is_missing(smoke_runs, tmp_path, capsys):
    runs = results.load_runs(smoke_runs / "smoke")
    document = {"results": verify.expected_entries(runs)}
    first, second = document["results"][0], document["results"][1]
    first["expected"] = round(first["expected"] + first["tolerance"], 2)  # on the edge: passes
    second["expected"] = round(second["expected"] - second["tolerance"] - 0.01, 2)  # just outside
    document["results"].append({**first, "method": "lwf", "expected": 50.0})
    table = verify.verify(runs, document)
    assert list(table["verdict"]) == ["pass", "fail", *["pass"] * (len(table) - 3), "missing"]
    assert table["difference"][1] == pytest.approx(second["tolerance"] + 0.01)
    path = tmp_path / "expected.yaml"
    path.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert main(["verify", "--profile", "smoke", "--runs", str(smoke_runs), "--expected", str(path)]) == 1
    out = capsys.readouterr().out
    assert "| fail |" in out and "| missing |" in out and "(1 fail, 1 missing)" in out
    assert out.count("| pass |") == 0  # only the rows that do not pass (--all: every row)


def test_paper_entries_survive_a_rewrite_and_bad_files_are_named(smoke_runs, tmp_path):
    path = tmp_path / "expected.yaml"
    paper = {"scenario": "class_incremental", "benchmark": "av-events", "mode": "standard", "method": "comm",
             "metric": "final_accuracy", "source": "paper", "expected": 70.0, "tolerance": 2.0, "reference": "Table 1"}
    path.write_text(yaml.safe_dump({"results": [paper]}))
    runs = results.load_runs(smoke_runs / "smoke")
    verify.write_expected(runs, path, "smoke", "test")
    assert verify.read_expected(path)["results"][-1] == paper
    produced = yaml.safe_load(path.read_text())["produced_by"]  # the code and inputs behind the numbers
    assert produced["git_commit"] == sorted(set(runs["git_commit"])) and len(produced["git_commit"]) == 1
    assert produced["backbone_sha256"] == sorted(set(runs["backbone_sha256"]))
    assert produced["data_sha256"] == sorted(set(runs["data_sha256"])) and produced["data_sha256"]
    path.write_text(yaml.safe_dump({"results": [{k: v for k, v in paper.items() if k != "tolerance"}]}))
    with pytest.raises(ConfigError, match=r"expected\.yaml: results\[0\]: missing key 'tolerance'"):
        verify.read_expected(path)
    path.write_text(yaml.safe_dump({"results": [paper | {"metric": "bwt"}]}))
    with pytest.raises(ConfigError, match=r"results\[0\]\.metric: one of"):
        verify.read_expected(path)
    with pytest.raises(ConfigError, match=r"absent\.yaml: no expected results"):
        verify.read_expected(tmp_path / "absent.yaml")
    assert verify.read_expected(verify.expected_file("paper"))["results"] == []


def test_the_figures_notebook_reports_without_an_expected_file(smoke_runs, capsys):
    assert not verify.expected_file("smoke").exists()
    assert verify.report("smoke", smoke_runs) is None
    assert capsys.readouterr().out.startswith("no expected results for the smoke profile (smoke.yaml)")


def test_a_profile_without_expected_results_says_so_and_does_not_fail(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(verify, "expected_file", lambda profile: tmp_path / f"{profile}.yaml")
    assert main(["verify", "--profile", "smoke", "--runs", str(tmp_path / "runs")]) == 0
    assert "no expected results for the smoke profile" in capsys.readouterr().out
    # an expected file named on the command line must exist
    assert main(["verify", "--profile", "smoke", "--runs", str(tmp_path), "--expected", str(tmp_path / "x.yaml")]) == 2


def test_runs_on_other_inputs_than_the_expected_numbers_are_named(smoke_runs, tmp_path, capsys):
    """Another CPU instruction set pre-trains other weights from the same code: verify says which
    inputs differ from the ones the expected numbers were produced from."""
    path = tmp_path / "smoke.yaml"
    runs = results.load_runs(smoke_runs / "smoke")
    verify.write_expected(runs, path, "smoke", "test")
    document = verify.read_expected(path)
    backbone = document["produced_by"]["backbone_sha256"]
    assert backbone and verify.inputs_note(runs, document) is None
    # only the runs behind the entries count (not, say, calibration runs in the same folder)
    assert len(verify.feeding_runs(runs, document["results"])) == len(runs)
    finetune = [e for e in document["results"] if e["method"] == "finetune"]
    assert set(verify.feeding_runs(runs, finetune)["method"]) == {"finetune"}
    document["produced_by"]["backbone_sha256"] = ["f" * 64]
    path.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert main(["verify", "--profile", "smoke", "--runs", str(smoke_runs), "--expected", str(path)]) == 0
    out = capsys.readouterr().out
    # each seed its own backbone: the note names every one the runs read, in order
    assert len(backbone) == 2
    assert f"backbone {', '.join(sorted(b[:12] for b in backbone))} (expected file: ffffffffffff)" in out
    assert "data" not in out.split("note:")[1].split(".")[0]
