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
from mmcl.records import identity_digest, run_directory, run_name

FINGERPRINT = "a1b2c3d4e5f6"
COMMIT = "1234567890abcdef1234567890abcdef12345678"


def write_run(root: Path, method: str, seed: int, matrix, scenario: str = "class_incremental",
              benchmark: str = "av-events", variant: str | None = None, profile: str = "tiny",
              modalities: list[str] | None = None, modes: tuple[str, ...] = ("standard",),
              difference: dict | None = None, identity: str | None = None, fingerprint: str | None = FINGERPRINT,
              commit: str | None = COMMIT, dirty: bool | None = True, run_extra: dict | None = None,
              metrics_extra: dict | None = None) -> Path:
    """A run folder as the engine writes it (metrics.json, order.json), from an accuracy matrix.

    ``difference``: the configuration's difference from the profile (the folder gets its digest);
    ``identity``: default, a digest of (method, variant, difference, seed)."""
    matrix = np.asarray(matrix, dtype=float)
    size = len(matrix)
    zero_shot = [10.0] * size
    counts = [10] * size
    correct = [round(a / 10) for a in matrix[-1]]
    summary = summarize(matrix, zero_shot, correct, counts, modalities)
    summary["zero_shot_accuracy"] = 10.0
    run_dir = run_directory(root, profile, scenario, benchmark, run_name(method, variant, difference), seed)
    identity = identity or identity_digest({"method": method, "variant": variant, "difference": difference,
                                            "seed": seed})
    run_dir.mkdir(parents=True)
    metrics = {"modes": {mode: summary for mode in modes},
               "accuracy_matrix": {mode: matrix.tolist() for mode in modes},
               "zero_shot": {mode: zero_shot for mode in modes},
               "task_names": [f"task {i}" for i in range(size)],
               "run": {"scenario": scenario, "benchmark": benchmark, "method": method, "variant": variant,
                       "seed": seed, "profile": profile, "identity": identity, "difference": difference or {},
                       "hparams": {}, "source_fingerprint": fingerprint, "git_commit": commit, "git_dirty": dirty},
               "timing": {"run_seconds_this_session": 1.0, "train_seconds": 0.5, "eval_seconds": 0.25},
               **(metrics_extra or {})}
    metrics["run"].update(run_extra or {})
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


def test_non_default_configurations_are_their_own_rows_right_after_their_method(runs_root):
    for seed, final in ((0, 20), (1, 30)):
        write_run(runs_root, "finetune", seed, [[100, 0], [final, final]], difference={"train.epochs": 1})
    write_run(runs_root, "replay", 0, [[100, 0], [50, 50]])
    write_run(runs_root, "replay", 0, [[100, 0], [40, 40]], difference={"methods.replay.buffer_size": 10})
    write_run(runs_root, "lwf", 0, [[100, 0], [10, 10]], variant="no-distillation",
              difference={"methods.lwf.temperature": 1.0, "train.lr": 0.5})
    runs = results.load_runs(runs_root)
    table = results.main_table(runs, "class_incremental")
    assert list(table["method"]) == ["finetune", "finetune (train.epochs=1)", "lwf", "replay",
                                     "replay (buffer_size=10)"]
    means = table.set_index("method")["final_accuracy_mean"]
    assert means["finetune"] == pytest.approx(70.0)  # 60, 70, 80: the epochs=1 runs are not mixed in
    assert means["finetune (train.epochs=1)"] == pytest.approx(25.0)
    assert means["replay"] == pytest.approx(50.0) and means["replay (buffer_size=10)"] == pytest.approx(40.0)
    variant = runs[runs["label"].str.contains("temperature")].iloc[0]
    assert variant["label"] == "lwf~no-distillation (temperature=1.0, train.lr=0.5)"
    assert variant["difference"] == {"methods.lwf.temperature": 1.0, "train.lr": 0.5}
    assert results.label_parts(variant["label"]) == ("lwf", "no-distillation", "temperature=1.0, train.lr=0.5")
    assert results.split_label("replay (buffer_size=10)") == ("replay", None)


def test_ablation_table_compares_each_configuration_with_its_own_full_method(tmp_path):
    for difference, (full, ablated) in (({}, (90, 50)), ({"train.epochs": 1}, (70, 60))):
        write_run(tmp_path, "lwf", 0, [[100, 0], [full, full]], difference=difference)
        write_run(tmp_path, "lwf", 0, [[100, 0], [ablated, ablated]], variant="no-distillation", difference=difference)
    table = results.ablation_table(results.load_runs(tmp_path))
    assert list(table["variant"]) == ["full", "no-distillation", "full (train.epochs=1)",
                                      "no-distillation (train.epochs=1)"]
    assert table["delta_final_accuracy"].tolist() == pytest.approx([0.0, -40.0, 0.0, -10.0])


def test_runs_of_different_identity_under_one_label_are_refused(tmp_path):
    first = write_run(tmp_path / "a", "replay", 0, [[100, 0], [60, 60]], identity="111111111111")
    second = write_run(tmp_path / "b", "replay", 0, [[100, 0], [20, 20]], identity="222222222222")
    with pytest.raises(ValueError, match="differ in configuration") as error:
        results.load_runs(tmp_path)
    assert str(first) in str(error.value) and str(second) in str(error.value)
    both = pd.concat([results.load_runs(tmp_path / "a"), results.load_runs(tmp_path / "b")])
    with pytest.raises(ValueError, match="differ in configuration"):
        results.main_table(both, "class_incremental")  # a frame built by hand is checked too
    write_run(tmp_path / "c", "replay", 1, [[100, 0], [20, 20]], identity="222222222222")
    assert len(results.load_runs(tmp_path / "a", tmp_path / "c")) == 2  # other seeds: no conflict


def test_tables_state_the_code_version_of_their_runs(runs_root, tmp_path):
    runs = results.load_runs(runs_root)
    assert set(runs["source_fingerprint"]) == {FINGERPRINT} and set(runs["git_commit"]) == {COMMIT}
    written = results.write_tables(runs, tmp_path / "one")["main_class_incremental"]
    version = f"{FINGERPRINT} (commit 1234567, dirty)"
    assert pd.read_csv(written["csv"])["code"].tolist() == [version, version]
    assert f"- Code: source {version}\n" in written["md"].read_text()
    assert f"\\multicolumn{{6}}{{l}}{{\\footnotesize Code: source {version}}}" in written["tex"].read_text()

    # One run copied and marked as made by other code (and outside git): the table says "mixed".
    copy = Path(runs.loc[(runs["label"] == "finetune") & (runs["seed"] == 2), "run_dir"].item())
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["run"].update(source_fingerprint="ffffffffffff", git_commit=None, git_dirty=None)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    written = results.write_tables(results.load_runs(runs_root), tmp_path / "two")["main_class_incremental"]
    markdown = written["md"].read_text()
    assert "Code: mixed, the 6 runs come from 2 code versions:" in markdown
    assert f"- source {version}: 5 runs" in markdown and "- source ffffffffffff: 1 run\n" in markdown
    assert "Code: mixed" in written["tex"].read_text()
    csv = pd.read_csv(written["csv"]).set_index("method")["code"]
    assert csv["finetune"] == f"{version}; ffffffffffff" and csv["lwf"] == version


def test_runs_recorded_before_code_versions_load_with_none(tmp_path):
    run_dir = write_run(tmp_path, "finetune", 0, [[100, 0], [60, 60]])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("identity", "difference", "source_fingerprint", "git_commit", "git_dirty"):
        del metrics["run"][key]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    row = results.load_runs(tmp_path).iloc[0]
    assert row["label"] == "finetune" and row["difference"] == {}
    assert row["identity"] is None and row["source_fingerprint"] is None and row["git_dirty"] is None
    table = results.main_table(results.load_runs(tmp_path), "class_incremental")
    assert results.code_footnotes(table) == ["Code: source unknown"]


def test_comparisons_are_main_table_rows_and_the_notes_say_what_rows_are(runs_root, tmp_path):
    overrides = {"head": {"freeze_old_rows": True}}
    write_run(runs_root, "lwf", 0, [[100, 0], [44, 44]], variant="frozen-head",
              run_extra={"role": "comparison", "variant_overrides": overrides})
    buffer = {"per_class": 5, "buffer_size": None, "size": 40, "per_class_kept": {}, "training_samples": 800,
              "share_of_training_data": 0.05}
    write_run(runs_root, "replay", 0, [[100, 0], [50, 50]], metrics_extra={"buffer": buffer})
    runs = results.load_runs(runs_root)
    table = results.main_table(runs, "class_incremental")
    assert list(table["method"]) == ["finetune", "lwf", "lwf~frozen-head", "replay"]
    assert table.set_index("method")["final_accuracy_mean"]["lwf~frozen-head"] == pytest.approx(44.0)
    notes = ["lwf~frozen-head: lwf with head.freeze_old_rows=true",
             "replay: buffer of 40 exemplars (5 per class), 5.0 % of the training data"]
    assert results.table_notes(table) == notes
    paths = results.write_table(table, tmp_path / "tables", "main")
    assert all(note in paths["md"].read_text() for note in notes)
    assert "notes" not in results.display_table(table) and "notes" not in paths["csv"].read_text()
    ablations = results.ablation_table(runs)  # comparisons are not ablations
    assert sorted(set(ablations["variant"])) == ["full", "no-distillation"]


def _read(run_dir: Path, backbone: str, data: str) -> None:
    """Give a fake run a manifest saying which weights and data (content digests) it read."""
    (run_dir / "manifest.json").write_text(json.dumps({"backbone": {"sha256": backbone}, "data": {"sha256": data}}))


def test_tables_state_what_their_runs_read_and_flag_a_mix(runs_root, tmp_path):
    runs = results.load_runs(runs_root)
    for run_dir in runs["run_dir"].unique():
        _read(Path(run_dir), "b" * 64, "d" * 64)
    written = results.write_tables(results.load_runs(runs_root), tmp_path / "one")["main_class_incremental"]
    assert f"- Inputs: backbone {'b' * 12}, data {'d' * 12}\n" in written["md"].read_text()
    assert pd.read_csv(written["csv"])["inputs"].tolist() == [f"backbone {'b' * 12}, data {'d' * 12}"] * 2

    # One finetune run read weights pre-trained elsewhere (another cache): the table says so.
    other = Path(runs.loc[(runs["label"] == "finetune") & (runs["seed"] == 1), "run_dir"].item())
    _read(other, "c" * 64, "d" * 64)
    markdown = results.write_tables(results.load_runs(runs_root), tmp_path / "two")["main_class_incremental"]["md"]
    text = markdown.read_text()
    assert "- MIXED inputs: the 6 runs read 2 different weights/data; their numbers are not comparable:" in text
    assert f"- backbone {'b' * 12}, data {'d' * 12}: 5 runs" in text and f"- backbone {'c' * 12}, data {'d' * 12}: 1 run\n" in text


def test_each_seed_its_own_backbone_is_not_a_mix(runs_root, tmp_path, caplog):
    runs = results.load_runs(runs_root)
    for run_dir, seed in zip(runs["run_dir"], runs["seed"]):  # model.pretrain.per_run_seed: one backbone a seed
        _read(Path(run_dir), str(seed) * 64, "d" * 64)
    seeds = sorted(runs["seed"].unique())
    assert len(seeds) > 1
    text = results.write_tables(results.load_runs(runs_root), tmp_path / "one")["main_class_incremental"]["md"].read_text()
    per_seed = "; ".join(f"seed {s}: backbone {str(s) * 12}, data {'d' * 12}" for s in seeds)
    assert f"- Inputs, one per seed: {per_seed}\n" in text
    assert "MIXED" not in text and "read different weights" not in caplog.text

    # Within one seed, two methods on different weights: their paired comparison is broken.
    other = Path(runs.loc[(runs["label"] == "finetune") & (runs["seed"] == seeds[0]), "run_dir"].item())
    _read(other, "e" * 64, "d" * 64)
    text = results.write_tables(results.load_runs(runs_root), tmp_path / "two")["main_class_incremental"]["md"].read_text()
    assert "- MIXED inputs: the 6 runs read" in text and f"- backbone {'e' * 12}, data {'d' * 12}: 1 run\n" in text


def test_runs_without_a_manifest_read_unrecorded_inputs(runs_root):
    table = results.main_table(results.load_runs(runs_root), "class_incremental")
    assert results.input_footnotes(table) == ["Inputs: backbone unrecorded, data unrecorded"]


def test_rows_whose_defaults_were_not_tuned_say_so(tmp_path):
    write_run(tmp_path, "finetune", 0, [[100, 0], [60, 60]], run_extra={"tuned": False})
    write_run(tmp_path, "lwf", 0, [[100, 0], [90, 90]], run_extra={"tuned": True})
    write_run(tmp_path, "zero-shot", 0, [[10, 10], [10, 10]])  # trains nothing: nothing recorded
    table = results.main_table(results.load_runs(tmp_path), "class_incremental")
    assert results.table_notes(table) == [
        "finetune: not tuned: the method's own defaults, not chosen by the validation search"]
