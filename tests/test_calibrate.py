"""The calibration table: hand-made run numbers, each target's verdict, the document block."""
import pandas as pd
import pytest

from mmcl.calibrate import calibration_table, paste_into, zero_shot_table
from mmcl.config import ConfigError


def _runs(joint, replay, forgetting, zero_tasks):
    rows = []
    for seed, (j, r, f, z) in enumerate(zip(joint, replay, forgetting, zero_tasks)):
        common = {"scenario": "class_incremental", "benchmark": "av-events", "seed": seed, "chance": 100 / 28,
                  "version": "abc", "modality": None, "zero_shot_tasks": None, "task_names": ["t1", "t2"]}
        rows += [{**common, "method": "joint", "final": j, "forgetting": 1.0, "run_dir": f"j{seed}"},
                 {**common, "method": "replay", "final": r, "forgetting": 10.0, "run_dir": f"r{seed}"},
                 {**common, "method": "finetune", "final": 20.0, "forgetting": f, "run_dir": f"f{seed}"},
                 {**common, "method": "zero-shot", "final": sum(z) / 2, "forgetting": 0.0, "run_dir": f"z{seed}",
                  "modality": "all", "zero_shot_tasks": z},
                 {**common, "method": "zero-shot", "final": 10.0, "forgetting": 0.0, "run_dir": f"za{seed}",
                  "modality": "audio"}]
    return pd.DataFrame(rows)


def test_targets_pass_only_when_they_hold_for_every_seed():
    runs = _runs(joint=[80.0, 93.0], replay=[75.0, 88.0], forgetting=[40.0, 35.0], zero_tasks=[[50.0, 30.0], [79.0, 20.0]])
    table = calibration_table(runs).set_index("check")
    assert table.loc["joint final accuracy", "pass"] == "FAIL"  # 93 > 92 on seed 1
    assert table.loc["joint final accuracy", "measured_mean"] == pytest.approx(86.5)
    gap = table.loc["joint - replay (5/class) final"]
    assert gap["pass"] == "pass" and gap["measured_mean"] == pytest.approx(5.0)
    assert table.loc["finetune forgetting", "pass"] == "pass"
    best = table.loc["zero-shot, best-read task"]
    assert best["pass"] == "pass" and best["measured_mean"] == pytest.approx(64.5)
    assert table.loc["zero-shot final, above chance", "pass"] == "pass"
    assert table.loc["joint final accuracy", "run_versions"] == (("j0", "abc"), ("j1", "abc"))
    failing = _runs(joint=[80.0], replay=[78.0], forgetting=[29.0], zero_tasks=[[81.0, 0.0]])
    verdicts = calibration_table(failing).set_index("check")["pass"]
    assert verdicts["joint - replay (5/class) final"] == "FAIL" and verdicts["finetune forgetting"] == "FAIL"
    assert verdicts["zero-shot, best-read task"] == "FAIL"


def test_zero_shot_per_modality():
    table = zero_shot_table(_runs([80.0, 81.0], [70.0, 70.0], [40.0, 40.0], [[50.0, 30.0], [60.0, 20.0]]))
    assert table.set_index("modality")["zero_shot_mean"].to_dict() == {"all": 40.0, "audio": 10.0}


def test_paste_into_replaces_only_the_marked_block(tmp_path):
    document = tmp_path / "benchmark.md"
    document.write_text("before\n<!-- calibration:start -->\nold\n<!-- calibration:end -->\nafter\n")
    paste_into(document, "| new |")
    assert document.read_text() == "before\n<!-- calibration:start -->\n| new |\n<!-- calibration:end -->\nafter\n"
    (tmp_path / "plain.md").write_text("no block")
    with pytest.raises(ConfigError, match="plain.md"):
        paste_into(tmp_path / "plain.md", "x")
    document.write_text("<!-- calibration:start -->\nA\n<!-- calibration:end -->\n<!-- compact:start -->\nB\n"
                        "<!-- compact:end -->\n")
    paste_into(document, "| C |", "compact")
    assert document.read_text() == ("<!-- calibration:start -->\nA\n<!-- calibration:end -->\n"
                                    "<!-- compact:start -->\n| C |\n<!-- compact:end -->\n")
    with pytest.raises(ConfigError, match="benchmark.md: no <!-- other:start -->"):
        paste_into(document, "x", "other")


def test_zero_shot_of_a_modality_stream_follows_each_seed_s_modality_order():
    runs = _runs([80.0, 81.0], [70.0, 70.0], [40.0, 40.0], [[50.0, 30.0], [60.0, 20.0]])
    runs["scenario"] = "modality_incremental"
    runs.loc[runs["seed"] == 1, "task_names"] = pd.Series([["t2", "t1"]] * 5, index=runs.index[runs["seed"] == 1])
    table = zero_shot_table(runs).set_index("modality")["zero_shot_mean"].to_dict()
    assert table == {"t1": 35.0, "t2": 45.0}  # t1: 50 (seed 0) and 20 (seed 1); t2: 30 and 60


def test_domain_and_modality_targets_read_the_accuracy_matrices():
    def scenario_runs(scenario, benchmark, finetune_matrix, joint_matrix, forgetting):
        common = {"scenario": scenario, "benchmark": benchmark, "seed": 0, "chance": 100 / 6, "version": "abc",
                  "modality": None, "zero_shot_tasks": None, "task_names": ["a", "b", "c"]}
        return [{**common, "method": "joint", "final": 80.0, "forgetting": 0.0, "run_dir": "j", "matrix": joint_matrix},
                {**common, "method": "replay", "final": 70.0, "forgetting": 5.0, "run_dir": "r", "matrix": None},
                {**common, "method": "finetune", "final": 60.0, "forgetting": forgetting, "run_dir": "f",
                 "matrix": finetune_matrix},
                {**common, "method": "zero-shot", "final": 30.0, "forgetting": 0.0, "run_dir": "z",
                 "modality": "all", "zero_shot_tasks": [30.0, 30.0, 30.0]}]

    # domain gaps: after - before = (70 - 50) and (80 - 76): mean 12 >= 10
    domain = [[60.0, 50.0, 40.0], [55.0, 70.0, 76.0], [50.0, 60.0, 80.0]]
    modality = [[90.0, 0.0, 0.0], [80.0, 70.0, 0.0], [75.0, 60.0, 49.0]]
    rows = scenario_runs("domain_incremental", "multilingual-emotion", domain, [[80.0] * 3] * 3, 12.0)
    rows += scenario_runs("modality_incremental", "modality-stream", modality, modality, 40.0)
    table = calibration_table(pd.DataFrame(rows)).set_index(["benchmark", "check"])
    gap = table.loc[("multilingual-emotion", "finetune: next domain after - before training")]
    assert gap["measured_mean"] == pytest.approx(12.0) and gap["pass"] == "pass"
    assert table.loc[("multilingual-emotion", "finetune forgetting"), "pass"] == "pass"  # 12 >= 10 (domain)
    assert table.loc[("modality-stream", "finetune forgetting"), "pass"] == "pass"  # 40 >= 30
    weakest = table.loc[("modality-stream", "joint final, weakest modality")]
    assert weakest["measured_mean"] == pytest.approx(49.0) and weakest["pass"] == "FAIL"
    # a domain step where training adds little fails the gap target
    flat = [[60.0, 58.0, 58.0], [60.0, 60.0, 59.0], [60.0, 60.0, 60.0]]
    rows = scenario_runs("domain_incremental", "multilingual-emotion", flat, [[80.0] * 3] * 3, 12.0)
    assert calibration_table(pd.DataFrame(rows)).set_index("check").loc[
        "finetune: next domain after - before training", "pass"] == "FAIL"
