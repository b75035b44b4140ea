"""The scripts in ``benchmarks/`` that docs cite as the command to re-measure: ``epoch_curves.py`` (the
plateau rule; a real smoke run writing its table, the command that made it and the docs block it is
asked to rewrite) and ``run_timing.py`` (a run's seconds split and its matrices' digest)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def epoch_curves():
    return _script("epoch_curves")


@pytest.fixture(scope="module")
def run_timing():
    return _script("run_timing")


def test_plateau_is_the_fewest_epochs_within_the_tolerance_of_the_best(epoch_curves):
    assert epoch_curves.plateau({2: 50.0, 3: 58.5, 5: 59.0, 8: 59.4}, 1.0) == 3
    assert epoch_curves.plateau({2: 50.0, 3: 58.0, 5: 59.0, 8: 60.0}, 1.0) == 5
    assert epoch_curves.plateau({2: 61.0, 3: 58.0}, 1.0) == 2
    assert epoch_curves.first_tasks_accuracy([[40.0, 0.0, 0.0], [30.0, 60.0, 0.0], [20.0, 10.0, 90.0]], 2) == 50.0


def test_the_script_runs_reports_and_rewrites_the_docs_block(epoch_curves, tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- epochs:start -->\nold table\n<!-- epochs:end -->\nafter\n")
    epoch_curves.main(["--profile", "smoke", "--methods", "finetune", "--epochs", "2", "1",
                       "--scenarios", "class_incremental", "--output-dir", str(tmp_path / "runs"),
                       "--set", "train.batch_size=8", "--update-docs", str(doc)])
    text = doc.read_text()
    assert text.startswith("before\n<!-- epochs:start -->\nValidation accuracy against epochs, profile smoke")
    assert text.endswith("<!-- epochs:end -->\nafter\n") and "old table" not in text
    command = ("python benchmarks/epoch_curves.py --profile smoke --scenarios class_incremental --epochs 1 2 "
               "--seeds 0 --methods finetune --set train.batch_size=8")
    assert f"`{command}`" in text
    configs = [yaml.safe_load(path.read_text()) for path in (tmp_path / "runs").rglob("config.yaml")]
    assert sorted((c["train"]["epochs"], c["train"]["batch_size"], c["train"]["eval_split"]) for c in configs) == [
        (1, 8, "val"), (2, 8, "val")]
    assert "| class_incremental | finetune |" in text and "final @1" in text and "first_tasks @2" in text
    assert "- class_incremental: the median method plateaus (within 1 point) at" in text
    written = (tmp_path / "runs" / "smoke" / "epoch_curves.md").read_text()
    assert written in text and written in capsys.readouterr().out


def test_a_docs_file_without_the_block_is_refused_by_name_and_only_the_named_block_changes(epoch_curves, tmp_path):
    doc = tmp_path / "plain.md"
    doc.write_text("no block here\n")
    with pytest.raises(SystemExit, match="plain.md: no <!-- epochs:start -->"):
        epoch_curves.update_docs(doc, "table\n")
    assert doc.read_text() == "no block here\n"
    doc.write_text("<!-- epochs:start -->\nA\n<!-- epochs:end -->\n<!-- batch8:start -->\nB\n<!-- batch8:end -->\n")
    epoch_curves.update_docs(doc, "C\n", "batch8")
    assert doc.read_text() == ("<!-- epochs:start -->\nA\n<!-- epochs:end -->\n"
                               "<!-- batch8:start -->\nC\n<!-- batch8:end -->\n")
    with pytest.raises(SystemExit, match="plain.md: no <!-- other:start -->"):
        epoch_curves.update_docs(doc, "table\n", "other")
    assert "table" not in doc.read_text()


def test_run_timing_splits_a_runs_seconds_and_the_rest_is_other(run_timing):
    timing = {"run_seconds_this_session": 10.0, "train_seconds": 6.0, "eval_seconds": 1.5,
              "forgetting_decomposition_seconds": 0.5}
    assert run_timing.split(timing) == {"run": 10.0, "train": 6.0, "eval": 1.5, "probe": 0.5, "other": 2.0}
    assert run_timing.split({"run_seconds_this_session": 3.0}) == {"run": 3.0, "train": 0.0, "eval": 0.0,
                                                                     "probe": 0.0, "other": 3.0}


def test_run_timing_runs_each_pair_again_and_prints_the_matrices_digest(run_timing, tmp_path, capsys):
    out = tmp_path / "runs"
    run_timing.main(["--profile", "smoke", "--output-dir", str(out), "--methods", "simplecil", "l2p",
                     "--pairs", "class_incremental:av-events"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "run", "train", "eval", "probe", "other", "matrices"]
    assert len(lines) == 2, "l2p declares no class-incremental scenario: skipped"
    assert lines[1].startswith("class_incremental av-events simplecil")
    import json
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert lines[1].split()[-1] == run_timing.matrix_digest(metrics)


def test_mkl_branches_prints_one_row_per_branch_and_the_branch_is_read_per_process(capsys):
    script = _script("mkl_branches")
    from mmcl import kernels

    script.main(["--branches", "AVX2,STRICT", "SSE4_2,STRICT", "COMPATIBLE,STRICT"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(kernels.cpu_model()) and kernels.cpu_vendor() in lines[0]
    rows = [line.split("|")[1:-1] for line in lines[3:]]
    assert [row[0].strip() for row in rows] == ["`AVX2,STRICT`", "`SSE4_2,STRICT`", "`COMPATIBLE,STRICT`"]
    digests = [row[1].strip() for row in rows]
    # The AVX2 and SSE4.2 branches differ where MKL honours them (Intel CPUs), and are one dispatch elsewhere.
    assert (digests[0] != digests[1]) == kernels.mkl_branch_honoured()
    assert all(float(row[2]) > 0 for row in rows)
    with pytest.raises(SystemExit):  # MKL would take it silently, as AUTO
        script.main(["--branches", "AVX3,STRICT"])
    assert "'AVX3,STRICT' is not an MKL branch" in capsys.readouterr().err
