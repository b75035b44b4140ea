"""Behaviour on the embedded tiny profile (about two minutes, most of it the one-off backbone
pre-training): sequential fine-tuning forgets, joint training is the upper bound, and training
learns the modalities the pre-trained backbone cannot read zero-shot."""
import pytest

from mmcl import engine
from mmcl.config import load_config

pytestmark = pytest.mark.slow
BASELINES = ["zero-shot", "finetune", "joint", "lwf", "ewc", "replay"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    output = tmp_path_factory.mktemp("tiny-runs")
    return load_config("tiny", [f"runtime.output_dir={output}", "runtime.progress=false"])


@pytest.fixture(scope="module")
def class_incremental(tiny):
    return {m: engine.run(tiny, "class_incremental", m, seed=0).metrics["modes"]["standard"] for m in BASELINES}


def test_sequential_finetuning_forgets(class_incremental):
    assert class_incremental["finetune"]["forgetting"] > 20.0
    assert class_incremental["finetune"]["bwt"] < -20.0


def test_joint_training_is_the_upper_bound(class_incremental):
    joint = class_incremental["joint"]["final_accuracy"]
    for method, summary in class_incremental.items():
        assert joint >= summary["final_accuracy"], method


def test_replay_and_lwf_forget_less_than_finetuning(class_incremental):
    for method in ("replay", "lwf"):
        assert class_incremental[method]["forgetting"] < class_incremental["finetune"]["forgetting"], method


def test_training_learns_what_zero_shot_cannot_read(tiny):
    # The backbone was pre-trained on images only: spectrograms and depth maps are new to it.
    zero = engine.run(tiny, "modality_incremental", "zero-shot", seed=0).metrics["modes"]["modality_agnostic"]
    joint = engine.run(tiny, "modality_incremental", "joint", seed=0).metrics["modes"]["modality_agnostic"]
    for modality in ("audio", "depth"):
        # zero-shot is near chance (2.5 %) on both; joint training must lift each clearly above it
        assert joint["accuracy_by_modality"][modality] > zero["accuracy_by_modality"][modality] + 15, modality
