"""``benchmarks/epoch_curves.py``: the plateau rule, and a real (smoke) run of the script writing its
table, the command that made it, and the docs block it is asked to rewrite."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "epoch_curves.py"


@pytest.fixture(scope="module")
def epoch_curves():
    spec = importlib.util.spec_from_file_location("epoch_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                       "--update-docs", str(doc)])
    text = doc.read_text()
    assert text.startswith("before\n<!-- epochs:start -->\nValidation accuracy against epochs, profile smoke")
    assert text.endswith("<!-- epochs:end -->\nafter\n") and "old table" not in text
    command = ("python benchmarks/epoch_curves.py --profile smoke --scenarios class_incremental --epochs 1 2 "
               "--seeds 0 --methods finetune")
    assert f"`{command}`" in text
    assert "| class_incremental | finetune |" in text and "final @1" in text and "first_tasks @2" in text
    assert "- class_incremental: the median method plateaus (within 1 point) at" in text
    written = (tmp_path / "runs" / "smoke" / "epoch_curves.md").read_text()
    assert written in text and written in capsys.readouterr().out


def test_a_docs_file_without_the_block_is_refused_by_name(epoch_curves, tmp_path):
    doc = tmp_path / "plain.md"
    doc.write_text("no block here\n")
    with pytest.raises(SystemExit, match="plain.md: no <!-- epochs:start -->"):
        epoch_curves.update_docs(doc, "table\n")
    assert doc.read_text() == "no block here\n"
