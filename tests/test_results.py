"""mmcl.results on fake run folders whose numbers are known by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmcl import results
from mmcl.metrics import summarize
from mmcl.records import run_directory


def write_run(root: Path, method: str, seed: int, matrix, scenario: str = "class_incremental",
              benchmark: str = "av-events", variant: str | None = None, profile: str = "tiny",
              modalities: list[str] | None = None, modes: tuple[str, ...] = ("standard",)) -> Path:
    """A run folder as the engine writes it (metrics.json, order.json), from an accuracy matrix."""
    matrix = np.asarray(matrix, dtype=float)
    size = len(matrix)
    zero_shot = [10.0] * size
    counts = [10] * size
    correct = [round(a / 10) for a in matrix[-1]]
    summary = summarize(matrix, zero_shot, correct, counts, modalities)
    summary["zero_shot_accuracy"] = 10.0
    run_name = f"{method}~{variant}" if variant else method
    run_dir = run_directory(root, profile, scenario, benchmark, run_name, seed)
    run_dir.mkdir(parents=True)
    metrics = {"modes": {mode: summary for mode in modes},
               "accuracy_matrix": {mode: matrix.tolist() for mode in modes},
               "zero_shot": {mode: zero_shot for mode in modes},
               "task_names": [f"task {i}" for i in range(size)],
               "run": {"scenario": scenario, "benchmark": benchmark, "method": method, "variant": variant,
                       "seed": seed, "profile": profile, "hparams": {}},
               "timing": {"run_seconds_this_session": 1.0, "train_seconds": 0.5, "eval_seconds": 0.25}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "order.json").write_text(json.dumps({"modality_order": modalities}))
    return run_dir


# Final accuracies 60 / 70 / 80 (rows [.., x, x]); forgetting (100 - x) on task 0.
MATRICES = {0: [[100, 0], [60, 60]], 1: [[100, 0], [70, 70]], 2: [[100, 0], [80, 80]]}


@pytest.fixture
def runs_root(tmp_path):
    for seed, matrix in MATRICES.items():
        write_run(tmp_path, "finetune", seed, matrix)
        write_run(tmp_path, "lwf", seed, [[100, 0], [90, 90]])
    write_run(tmp_path, "lwf", 0, [[100, 0], [50, 50]], variant="no-distillation")
    write_run(tmp_path, "lwf", 1, [[100, 0], [40, 40]], variant="no-distillation")
    (tmp_path / "tiny" / "class_incremental" / "av-events" / "ewc" / "seed0").mkdir(parents=True)  # unfinished
    return tmp_path


def test_load_runs_one_row_per_run_and_mode(runs_root):
    runs = results.load_runs(runs_root)
    assert len(runs) == 8  # 6 base + 2 variant runs; the unfinished ewc run is ignored
    assert set(runs["label"]) == {"finetune", "lwf", "lwf~no-distillation"}
    assert runs.loc[runs["label"] == "lwf~no-distillation", "variant"].eq("no-distillation").all()
    assert runs.loc[runs["label"] == "finetune", "variant"].isna().all()
    one = runs[(runs["label"] == "finetune") & (runs["seed"] == 1)].iloc[0]
    assert one["final_accuracy"] == pytest.approx(70.0)
    assert Path(one["run_dir"]).name == "seed1"
    assert one["accuracy_matrix"] == [[100, 0], [70, 70]]


def test_main_table_mean_and_sample_std_over_seeds(runs_root):
    table = results.main_table(results.load_runs(runs_root), "class_incremental")
    assert list(table["method"]) == ["finetune", "lwf"]  # variants left out, reading order
    finetune = table.set_index("method").loc["finetune"]
    assert finetune["seeds"] == 3
    assert finetune["final_accuracy_mean"] == pytest.approx(70.0)
    assert finetune["final_accuracy_std"] == pytest.approx(10.0)  # sample std of 60, 70, 80
    # average incremental accuracy = (100 + x) / 2; forgetting = 100 - x
    assert finetune["average_incremental_accuracy_mean"] == pytest.approx(85.0)
    assert finetune["average_incremental_accuracy_std"] == pytest.approx(5.0)
    assert finetune["forgetting_mean"] == pytest.approx(30.0)
    assert table.set_index("method").loc["lwf", "final_accuracy_std"] == pytest.approx(0.0)


def test_one_seed_has_undefined_std_shown_as_mean_only(tmp_path):
    write_run(tmp_path, "replay", 0, [[100, 0], [75, 65]])
    table = results.main_table(results.load_runs(tmp_path), "class_incremental")
    assert math.isnan(table.loc[0, "final_accuracy_std"])
    shown = results.display_table(table)
    assert shown.loc[0, "Final acc. (%)"] == "70.0"
    assert "Mode" not in shown.columns  # only the standard mode


def test_display_table_formats_mean_plus_minus_std(runs_root):
    shown = results.display_table(results.main_table(results.load_runs(runs_root), "class_incremental"))
    assert shown.loc[0, "Final acc. (%)"] == "70.0 ± 10.0"
    assert shown.loc[0, "Seeds"] == 3


def test_ablation_table_compares_variants_with_the_full_method_on_their_seeds(runs_root):
    table = results.ablation_table(results.load_runs(runs_root))
    assert list(table["variant"]) == ["full", "no-distillation"]
    full, variant = table.iloc[0], table.iloc[1]
    assert full["seeds"] == 2  # lwf has 3 seeds, but its variant only seeds 0 and 1
    assert variant["final_accuracy_mean"] == pytest.approx(45.0)
    assert variant["final_accuracy_std"] == pytest.approx(math.sqrt(50.0))
    assert variant["delta_final_accuracy"] == pytest.approx(45.0 - 90.0)
    assert full["delta_final_accuracy"] == pytest.approx(0.0)


def test_accuracy_curves_average_the_seen_tasks(runs_root):
    curves = results.accuracy_curves(results.load_runs(runs_root))
    finetune = curves[(curves["label"] == "finetune") & (curves["seed"] == 0)]
    assert finetune["accuracy"].tolist() == pytest.approx([100.0, 60.0])
    assert finetune["task"].tolist() == [1, 2]


def test_modality_incremental_runs_have_two_modes_and_per_modality_accuracy(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "comm", seed, [[90, 0], [70, 50 + 10 * seed]], scenario="modality_incremental",
                  benchmark="modality-stream", modalities=["image", "audio"],
                  modes=("modality_aware", "modality_agnostic"))
    runs = results.load_runs(tmp_path)
    assert sorted(runs["mode"]) == ["modality_agnostic", "modality_agnostic", "modality_aware", "modality_aware"]
    table = results.main_table(runs, "modality_incremental")
    assert list(table["mode"]) == ["modality_aware", "modality_agnostic"]
    by_modality = results.modality_accuracy(runs)
    audio = by_modality[(by_modality["modality"] == "audio") & (by_modality["mode"] == "modality_aware")]
    assert audio["accuracy"].mean() == pytest.approx(55.0)
    matrix, count = results.mean_accuracy_matrix(runs[runs["mode"] == "modality_aware"])
    assert count == 2 and matrix[1, 1] == pytest.approx(55.0)


def test_mixed_profiles_are_refused(tmp_path):
    write_run(tmp_path, "finetune", 0, [[100, 0], [60, 60]], profile="tiny")
    write_run(tmp_path, "finetune", 0, [[100, 0], [60, 60]], profile="smoke")
    with pytest.raises(ValueError, match="several profiles"):
        results.main_table(results.load_runs(tmp_path), "class_incremental")


def test_writers_produce_csv_latex_and_markdown(runs_root, tmp_path):
    runs = results.load_runs(runs_root)
    written = results.write_tables(runs, tmp_path / "figures")
    assert set(written) == {"main_class_incremental", "ablations"}
    paths = written["main_class_incremental"]
    csv = pd.read_csv(paths["csv"])
    assert csv.loc[csv["method"] == "finetune", "final_accuracy_mean"].item() == pytest.approx(70.0)
    tex = paths["tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$70.0 \\pm 10.0$" in tex
    assert "Final acc. (\\%)" in tex
    ablation_tex = written["ablations"]["tex"].read_text()
    assert "no-distillation" in ablation_tex and "$\\Delta$" in ablation_tex
    markdown = paths["md"].read_text()
    assert "| finetune | 3 | 70.0 ± 10.0 |" in markdown
    assert markdown.splitlines()[3].startswith("|:---|")


def test_latex_escapes_special_characters():
    assert results.latex_escape("lwf~no_kd & 5%") == r"lwf\textasciitilde{}no\_kd \& 5\%"
