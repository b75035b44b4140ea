"""The forgetting decomposition: a nearest-class-mean (NCM) probe on each method's representation at
every task's end, beside its own classifier. By hand on tiny tensors, a control on random features,
the summary formulas, the proof that it changes no other number of a run (byte for byte), and the
table and figure from fake run records."""
from __future__ import annotations

import json
import random

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from test_results import write_run  # noqa: E402

from mmcl import engine, forgetting, plots, records, results, runs, runtime  # noqa: E402
from mmcl.methods.base import Method  # noqa: E402
from mmcl.metrics import forgetting_decomposition_summary  # noqa: E402
from mmcl.methods import REGISTRY  # noqa: E402
from mmcl.methods import method_class  # noqa: E402


# ------------------------------------------------------------------------------------------ the probe
def test_ncm_by_hand():
    means = forgetting.ClassMeans()
    # class 0: (1, 0) twice; class 2: (0, 1) and (0, 3); class 4: (-1, 0) - added over two batches
    means.add(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 2]))
    means.add(torch.tensor([[0.0, 3.0], [-1.0, 0.0]]), torch.tensor([2, 4]))
    classes = [0, 2, 4]
    assert torch.equal(means.means(classes), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    test = torch.tensor([[3.0, 1.0], [0.1, 5.0], [-2.0, 0.5], [1.0, 2.0]])
    labels = torch.tensor([0, 2, 4, 0])  # the last is nearer class 2's mean (cos 0.89 vs 0.45): wrong
    assert forgetting.ncm_predict(test, means.means(classes), classes).tolist() == [0, 2, 4, 2]
    assert forgetting.ncm_correct(test, labels, means.means(classes), classes) == 3
    # Over a smaller label space the same sample can only go to the classes asked for.
    assert forgetting.ncm_predict(test[3:], means.means([0, 4]), [0, 4]).tolist() == [0]


def test_class_means_average_normalised_features():
    means = forgetting.ClassMeans()
    means.add(torch.tensor([[100.0, 0.0], [0.0, 1.0]]), torch.tensor([6, 6]))
    # mean of (1, 0) and (0, 1), normalised; the raw mean (50, 0.5) would point along the first axis
    assert means.means([6]) == pytest.approx(torch.tensor([[2**-0.5, 2**-0.5]]))
    with pytest.raises(ValueError, match=r"classes \[1, 9\] have no training features"):
        means.means([1, 6, 9])


def test_first_per_class_takes_the_first_samples_of_each_class_in_dataset_order():
    labels = torch.tensor([3, 1, 3, 3, 1, 0, 3])
    assert forgetting.first_per_class(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert forgetting.first_per_class(labels, 1).tolist() == [0, 1, 5]
    assert forgetting.first_per_class(labels, None).tolist() == list(range(7))


def test_the_probe_reads_class_structure_and_random_features_at_chance():
    generator = torch.Generator().manual_seed(0)
    classes, per_class, dim = 10, 100, 32
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)

    def accuracy(train: torch.Tensor, test: torch.Tensor) -> float:
        means = forgetting.ClassMeans()
        means.add(train, labels)
        everything = list(range(classes))
        return forgetting.ncm_correct(test, labels, means.means(everything), everything) / len(labels)

    informative = [centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=generator) for _ in range(2)]
    noise = [torch.randn(len(labels), dim, generator=generator) for _ in range(2)]
    assert accuracy(*informative) > 0.95
    assert 0.06 < accuracy(*noise) < 0.14  # chance: 0.10, one binomial std 0.0095


def test_summary_by_hand():
    own = [[90, 10, 5], [60, 80, 7], [30, 50, 70]]
    ncm = [[95], [85, 88], [80, 82, 75]]
    summary = forgetting_decomposition_summary(own, ncm, [None, 60.0, 40.0], [None, 85.0, 81.0])
    assert summary["own_old"] == [None, 60.0, 40.0] and summary["ncm_old"] == [None, 85.0, 81.0]
    assert summary["ncm_matrix"] == [[95.0], [85.0, 88.0], [80.0, 82.0, 75.0]]
    assert summary["final_own_old"] == 40.0 and summary["final_ncm_old"] == 81.0
    assert summary["classifier_gap"] == 41.0
    assert summary["own_drop"] == pytest.approx(45.0)  # mean(90 - 30, 80 - 50)
    assert summary["ncm_drop"] == pytest.approx(10.5)  # mean(95 - 80, 88 - 82)
    single = forgetting_decomposition_summary([[50.0]], [[60.0]], [None], [None])
    assert single["final_own_old"] is None and single["own_drop"] is None
    with pytest.raises(ValueError, match="tasks 0..i"):
        forgetting_decomposition_summary(own, [[95], [85], [80, 82, 75]], [None, 1, 2], [None, 1, 2])


# ----------------------------------------------------------------------------- neutral, byte for byte
def _neutrality_cases() -> list[tuple[str, str]]:
    """Every registered method on its first scenario; those that read the modality ID also modality-incremental."""
    import mmcl.methods  # noqa: F401

    cases = []
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        cases.append((name, cls.compatible_scenarios[0]))
        if cls.uses_modality_id and cls.compatible_scenarios[0] != "modality_incremental":
            cases.append((name, "modality_incremental"))
    return cases


TIMES = {"eval_seconds", "train_seconds", "samples_per_second", "memory", "forgetting_decomposition",
         "forgetting_decomposition_seconds"}


def _tensors_bytes(state) -> object:
    if isinstance(state, torch.Tensor):
        flat = state.detach().cpu().reshape(-1).contiguous()
        return str(state.dtype), tuple(state.shape), flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    if isinstance(state, dict):
        return {k: _tensors_bytes(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_tensors_bytes(v) for v in state]
    return state


@pytest.mark.parametrize("method, scenario", _neutrality_cases())
def test_the_probe_changes_no_other_number_of_a_run(smoke_config, tmp_path, method, scenario):
    made = {}
    for on in (True, False):
        config = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(
            update={"forgetting_decomposition": on})})
        made[on] = engine.run(config, scenario, method, seed=1, output_dir=tmp_path / str(on))
    with_probe, without = made[True], made[False]
    # every number of metrics.json, as written (bytes of the JSON), but the probe's own and the timings
    kept = {k: v for k, v in with_probe.metrics.items() if k not in ("forgetting_decomposition", "timing", "memory")}
    other = {k: v for k, v in without.metrics.items() if k not in ("forgetting_decomposition", "timing", "memory")}
    assert json.dumps(kept, sort_keys=True) == json.dumps(other, sort_keys=True)
    assert without.metrics["forgetting_decomposition"] == {"enabled": False}
    for name in ("zero_shot.json", "order.json"):
        assert (with_probe.run_dir / name).read_bytes() == (without.run_dir / name).read_bytes(), name
    # every task's record (losses, correct counts) and the method's state after every kept checkpoint
    rows = [records.read_jsonl(r.run_dir / "tasks.jsonl") for r in (with_probe, without)]
    assert [{k: v for k, v in row.items() if k not in TIMES} for row in rows[0]] == \
        [{k: v for k, v in row.items() if k not in TIMES} for row in rows[1]]
    for (index, path), (other_index, other_path) in zip(runs.checkpoints(with_probe.run_dir),
                                                        runs.checkpoints(without.run_dir), strict=True):
        states = [records.load_tensors(p, map_location="cpu")["method_state"] for p in (path, other_path)]
        assert index == other_index and _tensors_bytes(states[0]) == _tensors_bytes(states[1]), path.name

    record = with_probe.metrics["forgetting_decomposition"]
    assert record["enabled"] is True
    for mode, summary in with_probe.metrics["modes"].items():
        probe = record["modes"][mode]
        if probe is None:  # no representation in this mode: the MoE adapters, modality-agnostic
            assert method == "moe-adapters" and mode == "modality_agnostic"
            continue
        # the own classifier's old-class accuracy is the accuracy matrix's, not computed again
        assert probe["final_own_old"] == pytest.approx(summary["old_accuracy"])
        assert len(probe["ncm_matrix"]) == len(with_probe.accuracy_matrix[mode])
        assert all(0 <= v <= 100 for row in probe["ncm_matrix"] for v in row)
    assert all(r["forgetting_decomposition_seconds"] >= 0 for r in rows[0])


def test_the_probe_puts_back_train_flags_random_generators_and_model_state(smoke_config):
    config = smoke_config
    method, stream = engine.build_run(config, "class_incremental", "finetune", 0)
    device = torch.device("cpu")
    modes = engine.evaluation_modes("class_incremental")
    results_row = engine.evaluate_stream(method, stream.tasks, 0, modes, config, device)
    method.train()
    method.encoder.eval()  # as during training: the head trains, the frozen backbone in inference mode
    flags = [m.training for m in method.modules()]
    state = _tensors_bytes({k: v.clone() for k, v in method.state_dict().items()})
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    before = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    probe = engine.forgetting_decomposition(method, stream.tasks, 0, modes, results_row, config, device)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before
    assert [m.training for m in method.modules()] == flags
    assert _tensors_bytes(dict(method.state_dict())) == state
    assert torch.is_grad_enabled()
    assert probe["standard"]["own_old"] is None and len(probe["standard"]["ncm_accuracy"]) == 1


def test_a_capped_probe_reads_fewer_training_samples_and_changes_no_number_either(smoke_config, tmp_path):
    capped = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(
        update={"forgetting_decomposition_per_class": 2})})
    full = engine.run(smoke_config, "class_incremental", "finetune", seed=0, output_dir=tmp_path / "full")
    few = engine.run(capped, "class_incremental", "finetune", seed=0, output_dir=tmp_path / "few")
    assert json.dumps(few.accuracy_matrix) == json.dumps(full.accuracy_matrix)
    assert few.metrics["modes"] == full.metrics["modes"]
    assert few.metrics["forgetting_decomposition"]["per_class"] == 2
    assert full.metrics["forgetting_decomposition"]["per_class"] is None
    probe = few.metrics["forgetting_decomposition"]["modes"]["standard"]
    assert probe["final_own_old"] == full.metrics["forgetting_decomposition"]["modes"]["standard"]["final_own_old"]
    assert len(probe["ncm_matrix"]) == 2


def test_random_features_make_the_probe_read_at_chance(smoke_config, tmp_path, monkeypatch):
    """A negative control: with the representation replaced by noise (its own generator), the probe
    falls to chance (1 of 6 classes after the last task: 16.7 here); on the real one it reads the classes."""
    real = engine.run(smoke_config, "class_incremental", "simplecil", seed=0, output_dir=tmp_path / "real")
    generator = torch.Generator().manual_seed(0)
    cls = method_class("simplecil")
    represent, classify = cls.representation, cls.classify
    # its predictions as before, no longer read from the representation, which becomes noise
    monkeypatch.setattr(cls, "predict", lambda self, batch, space, modality_known=True:
                        classify(self, represent(self, batch, modality_known), space))
    monkeypatch.setattr(cls, "classify", Method.classify)
    monkeypatch.setattr(cls, "representation",
                        lambda self, batch, modality_known=True: torch.randn(len(batch), 16, generator=generator))
    noise = engine.run(smoke_config, "class_incremental", "simplecil", seed=0, output_dir=tmp_path / "noise")
    assert noise.accuracy_matrix == real.accuracy_matrix  # the method itself is untouched

    def final_ncm(run) -> float:
        return float(np.mean(run.metrics["forgetting_decomposition"]["modes"]["standard"]["ncm_matrix"][-1]))

    assert final_ncm(real) > 50  # 55.6 (seed 0)
    assert final_ncm(noise) < 35  # chance 16.7, one binomial std over 36 samples 6.2


class Interrupted(Exception):
    pass


def test_a_resumed_run_records_the_same_decomposition(smoke_config, tmp_path, monkeypatch):
    uninterrupted = engine.run(smoke_config, "class_incremental", "lwf", seed=1, output_dir=tmp_path / "a")
    real_evaluate_stream = engine.evaluate_stream

    def killed_during_second_task(method_obj, tasks, after, *args, **kwargs):
        if after == 1:
            raise Interrupted
        return real_evaluate_stream(method_obj, tasks, after, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_stream", killed_during_second_task)
    with pytest.raises(Interrupted):
        engine.run(smoke_config, "class_incremental", "lwf", seed=1, output_dir=tmp_path / "b")
    monkeypatch.setattr(engine, "evaluate_stream", real_evaluate_stream)
    resumed = engine.run(smoke_config, "class_incremental", "lwf", seed=1, output_dir=tmp_path / "b")
    assert resumed.metrics["forgetting_decomposition"] == uninterrupted.metrics["forgetting_decomposition"]


def test_a_run_resumed_with_the_probe_switched_on_says_which_tasks_lack_it():
    rows = [{"task": 0, "evaluation": {"standard": {"accuracy": [50.0, 0.0]}}},
            {"task": 1, "evaluation": {"standard": {"accuracy": [40.0, 60.0]}},
             "forgetting_decomposition": {"standard": {"ncm_accuracy": [70.0, 65.0], "own_old": 40.0,
                                                       "ncm_old": 70.0}}}]
    record = runs.forgetting_decomposition_record(rows, ["standard"], True)
    assert record == {"enabled": True, "per_class": None, "modes": None, "note": "tasks [0] were run without the probe"}
    assert runs.forgetting_decomposition_record(rows, ["standard"], False) == {"enabled": False}


# -------------------------------------------------------------------------------- table and figure
def _decomposition(own_old: float, ncm_old: float, own_drop: float = 10.0, ncm_drop: float = 2.0) -> dict:
    return {"own_old": [None, own_old], "ncm_old": [None, ncm_old], "ncm_matrix": [[90.0], [ncm_old, 80.0]],
            "final_own_old": own_old, "final_ncm_old": ncm_old, "classifier_gap": ncm_old - own_old,
            "own_drop": own_drop, "ncm_drop": ncm_drop}


@pytest.fixture
def decomposed_runs(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        for method, own, ncm in (("finetune", 20.0, 60.0), ("replay", 70.0, 75.0), ("comm", 50.0 + seed, 55.0)):
            write_run(root, method, seed, [[100, 0], [own, 90]], metrics_extra={"forgetting_decomposition": {
                "enabled": True, "modes": {"standard": _decomposition(own, ncm + 2 * seed)}}})
        write_run(root, "lwf", seed, [[100, 0], [30, 90]])  # recorded before the probe: left out
        modes = ("modality_aware", "modality_agnostic")
        write_run(root, "moe-adapters", seed, [[90, 0], [70, 50]], scenario="modality_incremental",
                  benchmark="modality-stream", modalities=["image", "audio"], modes=modes,
                  metrics_extra={"forgetting_decomposition": {"enabled": True, "modes": {
                      "modality_aware": _decomposition(70.0, 85.0), "modality_agnostic": None}}})
    return results.load_runs(root)


def test_the_table_shows_own_and_probe_old_class_accuracy_over_seeds(decomposed_runs, tmp_path, caplog):
    table = results.forgetting_decomposition_table(decomposed_runs)
    assert "forgetting decomposition: 4 of 10 runs hold none" in caplog.text  # lwf x2, moe agnostic x2
    standard = table[table["scenario"] == "class_incremental"].set_index("method")
    assert list(standard.index) == ["finetune", "replay", "comm"]  # reading order; the paper method last
    assert standard.loc["finetune", "own_old_accuracy_mean"] == 20.0
    assert standard.loc["finetune", "ncm_old_accuracy_mean"] == 61.0  # 60 and 62
    assert standard.loc["finetune", "ncm_old_accuracy_std"] == pytest.approx(np.std([60, 62], ddof=1))
    assert standard.loc["comm", "own_old_accuracy_mean"] == 50.5 and standard.loc["comm", "seeds"] == 2
    moe = table[table["method"] == "moe-adapters"]
    assert moe["mode"].tolist() == ["modality_aware"]  # the mode without a representation is left out
    written = results.write_tables(decomposed_runs, tmp_path / "figures")
    paths = written["forgetting_decomposition"]
    assert sorted(p.suffix for p in paths.values()) == [".csv", ".md", ".tex"]
    markdown = paths["md"].read_text()
    assert "Old acc., own (%)" in markdown and "Old acc., NCM (%)" in markdown
    assert "| Class-incremental | av-events | standard | finetune | 2 | 20.0 ± 0.0 | 61.0 ± 1.4 |" in markdown
    assert "lwf" not in markdown
    csv = pd.read_csv(paths["csv"])
    assert set(csv["method"]) == {"finetune", "replay", "comm", "moe-adapters"}
    assert "\\toprule" in paths["tex"].read_text()


def test_old_records_alone_give_no_table_and_no_figure(tmp_path, caplog):
    for seed in (0, 1):
        write_run(tmp_path, "finetune", seed, [[100, 0], [40, 90]])
    runs = results.load_runs(tmp_path)
    assert runs["ncm_old_accuracy"].isna().all()
    written = results.write_tables(runs, tmp_path / "figures")
    assert "forgetting_decomposition" not in written
    assert caplog.text.count("forgetting decomposition:") == 1  # one line, no crash
    figures = plots.write_figures(runs, tmp_path / "figures")
    assert not [name for name in figures if name.startswith("forgetting_decomposition")]
    with pytest.raises(ValueError, match="holds the forgetting decomposition"):
        plots.plot_forgetting_decomposition(runs, "class_incremental")
    plt.close("all")


def test_the_figure_sets_the_paper_methods_apart(decomposed_runs, tmp_path):
    figure = plots.plot_forgetting_decomposition(decomposed_runs, "class_incremental")
    (axis,) = figure.axes
    names = [tick.get_text() for tick in axis.get_xticklabels()]
    assert names == ["finetune", "replay", "comm"]
    positions = [tick.get_position()[0] for tick in axis.get_xticklabels()]
    assert positions[2] - positions[1] > positions[1] - positions[0]  # a gap before the paper methods
    bars = [p for p in axis.patches if p.get_width() < 0.5]
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert heights == sorted([20.0, 61.0, 70.0, 76.0, 50.5, 56.0])  # own and probe means per method
    assert "old-class" in axis.get_ylabel() and "(%)" in axis.get_ylabel()
    plt.close(figure)
    written = plots.write_figures(decomposed_runs, tmp_path / "figures")
    for scenario in ("class_incremental", "modality_incremental"):
        paths = written[f"forgetting_decomposition_{scenario}"]
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    assert not plt.get_fignums()


def test_auto_probes_the_runs_the_table_reads_and_not_ablation_variants(smoke_config, tmp_path):
    """``runtime.forgetting_decomposition: auto`` (the default): the defaults and the fair comparisons
    carry the probe, which the decomposition table reads; an ablation variant, which no output reads
    it from, does not; true and false switch it for every run."""
    assert smoke_config.runtime.forgetting_decomposition == "auto"
    default = engine.run(smoke_config, "class_incremental", "ranpac", seed=0, output_dir=tmp_path / "auto")
    variant = engine.run(smoke_config, "class_incremental", "ranpac", seed=0, output_dir=tmp_path / "auto",
                         variant="no-projection")
    assert default.metrics["forgetting_decomposition"]["enabled"] is True
    assert variant.metrics["run"]["role"] == "ablation"
    assert variant.metrics["forgetting_decomposition"] == {"enabled": False}
    assert variant.metrics["timing"]["forgetting_decomposition_seconds"] == 0.0
    for setting, role, expected in [(True, "ablation", True), (False, None, False), (False, "comparison", False),
                                    ("auto", "comparison", True), ("auto", None, True), ("auto", "ablation", False)]:
        config = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(
            update={"forgetting_decomposition": setting})})
        assert runtime.probes_forgetting(config, role) is expected, (setting, role)


@pytest.mark.parametrize("method, scenario", [("finetune", "class_incremental"), ("comm", "modality_incremental"),
                                              ("moe-adapters", "modality_incremental"), ("ranpac", "class_incremental"),
                                              ("icarl", "class_incremental")])
def test_the_probe_reads_the_evaluation_features_it_would_compute(smoke_config, method, scenario, monkeypatch):
    """The evaluation's forward pass hands the probe its features (Method.predict_with_features): the
    probe then encodes only training data, and its numbers are the ones it computes on its own, in
    both modes (the MoE adapters' modality-agnostic mode has no representation: computed, None)."""
    config = smoke_config.model_copy(update={"train": smoke_config.train.model_copy(update={"epochs": 1})})
    built, stream = engine.build_run(config, scenario, method, 0)
    device, modes = torch.device("cpu"), engine.evaluation_modes(scenario)
    for index, task in enumerate(stream.tasks[:2]):
        built.context.seen_classes = sorted({c for t in stream.tasks[: index + 1] for c in t.classes})
        built.begin_task(built.context.tasks[index])
        if built.trains_on(task):
            engine.train_task(built, built.context.tasks[index], [built.context.tasks[index].train], config, 0, device,
                              False)
        built.end_task(built.context.tasks[index])
    kept: dict = {}
    results_row = engine.evaluate_stream(built, stream.tasks, 1, modes, config, device, kept)
    assert results_row == engine.evaluate_stream(built, stream.tasks, 1, modes, config, device)  # predictions alike
    calls = []
    real = type(built).representation
    monkeypatch.setattr(type(built), "representation",
                        lambda self, batch, modality_known=True: calls.append(len(batch)) or real(self, batch, modality_known))
    reused = engine.forgetting_decomposition(built, stream.tasks, 1, modes, results_row, config, device, kept)
    reused_calls, calls[:] = sum(calls), []
    computed = engine.forgetting_decomposition(built, stream.tasks, 1, modes, results_row, config, device)
    assert json.dumps(reused, sort_keys=True) == json.dumps(computed, sort_keys=True)
    evaluation = sum(len(t.test) for t in stream.tasks[:2])
    trained = sum(len(t.train) for t in stream.tasks[:2])
    probed = [m for m in modes if (m == modes[0] or built.uses_modality_id) and reused[m] is not None]
    if method != "moe-adapters":  # (its agnostic mode stops at the first training batch, both ways)
        assert reused_calls == trained * len(probed)  # training data only
    assert sum(calls) - reused_calls == evaluation * len(probed)  # on its own it encodes the evaluation data too
