"""Behaviour on the embedded tiny profile (a few minutes, the backbone pre-training once):
sequential fine-tuning forgets, joint training is the upper bound, and training learns the
modalities the pre-trained backbone cannot read zero-shot."""
import pytest

from mmcl import engine
from mmcl.config import load_config

from learning_check import UNTRAINED_OVERRIDES, learns

pytestmark = pytest.mark.slow
# The trained baselines and rehearsal methods; not the prototype methods (SimpleCIL, RanPAC, APER):
# RanPAC's closed-form classifier on the frozen features passes joint training's final accuracy on
# tiny (seed 0: 82.1 % vs 79.0 %), so "joint is the upper bound" is no rule for them.
BASELINES = ["zero-shot", "finetune", "joint", "lwf", "ewc", "replay", "icarl", "derpp"]


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


def test_rehearsal_and_lwf_forget_less_than_finetuning(class_incremental):
    for method in ("replay", "lwf", "icarl", "derpp"):
        assert class_incremental[method]["forgetting"] < class_incremental["finetune"]["forgetting"], method


@pytest.mark.xfail(strict=True, reason=(
    "the generator's depth maps (v3, v4) are nearly unreadable by the frozen tiny tower: joint 16.0 % vs zero-shot 2.7 % on depth "
    "(audio 76.7 % vs 0.0 %), seed 0; the same cause leaves modality-stream joint below its 70 % calibration "
    "target (docs/benchmark.md)"))
def test_training_learns_what_zero_shot_cannot_read(tiny):
    # The backbone was pre-trained on images only: spectrograms and depth maps are new to it.
    zero = engine.run(tiny, "modality_incremental", "zero-shot", seed=0).metrics["modes"]["modality_agnostic"]
    joint = engine.run(tiny, "modality_incremental", "joint", seed=0).metrics["modes"]["modality_agnostic"]
    for modality in ("audio", "depth"):
        # zero-shot is near chance (2.5 %) on both; joint training must lift each clearly above it
        assert joint["accuracy_by_modality"][modality] > zero["accuracy_by_modality"][modality] + 15, modality


# The prompt methods' (and SLCA's) learning is checked on smoke too (tests/test_comm.py,
# tests/test_prompt_family.py);
# on tiny they must pass the same check, and their untrained controls must fail it. Seed 0.
# Published L2P masks the logits of other tasks' classes in training, so nothing in its loss moves a
# new modality out of the old classes: 97 % of its depth predictions land there (measured: depth 2 %
# vs zero-shot 2 %, audio 25 % vs 9 %, 0.09 of zero-shot's errors fixed); its unmasked variant
# learns both, by how much depends on the machine: the tiny backbone's weights depend on the CPU's
# instruction set (docs/benchmark.md), and at the validation-tuned defaults of L2P (lr_scale 1.0,
# which the variant inherits) the variant fixed 0.30 of zero-shot's errors on one machine (audio
# 48.7 % vs 4.7 %, depth 17.3 % vs 2.7 %) and 0.48 on an AVX-512 one (audio 76.7 % vs 13.3 %, depth
# 27.3 % vs 3.3 %), the bar being 0.33: a non-strict expected failure, with both numbers. Depth is
# the benchmark's known weak spot (joint training reaches 16 % there, the xfail above).
MACHINE_DEPENDENT = ("the tiny backbone's weights depend on the CPU's instruction set, and this result "
                     "with them: ")
PROMPT_LEARNING_CASES = [
    pytest.param("comm", None, True, id="comm-trained"),
    pytest.param("comm", None, False, id="comm-untrained"),
    pytest.param("l2p", None, True, id="l2p-trained", marks=pytest.mark.xfail(
        strict=True, reason="L2P's train-time mask: depth 2 % vs zero-shot 2 %")),
    pytest.param("l2p", "unmasked", True, id="l2p~unmasked-trained", marks=pytest.mark.xfail(
        strict=False, reason=MACHINE_DEPENDENT + "unmasked L2P at L2P's tuned lr_scale 1.0 fixed 0.30 of "
                             "zero-shot's errors on one machine, 0.48 on an AVX-512 one (bar 0.33; seed 0)")),
    pytest.param("l2p", None, False, id="l2p-untrained"),
    # The papers' train-time masks (DualPrompt's, CODA-Prompt's defaults) are checked below in their
    # unmasked variants (measured, seed 0, share of zero-shot's errors fixed: dualprompt 0.34,
    # coda-prompt 0.41; untrained 0.02 / 0.00) and as defaults (below).
    *(pytest.param(method, variant, True, id=f"{method}{'~' + variant if variant else ''}-trained")
      for method, variant in (("dualprompt", "unmasked"), ("coda-prompt", "unmasked"), ("slca", None))),
    *(pytest.param(method, None, False, id=f"{method}-untrained") for method in ("dualprompt", "coda-prompt", "slca")),
    # The masks, as L2P's: new modalities stay in the old classes (measured, seed 0, modality-aware:
    # dualprompt 0.05, coda-prompt 0.10 of zero-shot's errors fixed; depth 2.0 % / 2.7 % vs zero-shot
    # 2.7 %; on an AVX-512 machine 0.06 and 0.28: CODA-Prompt's audio 63 % vs 13 %, so within reach of
    # the bar on a third machine, hence not strict).
    *(pytest.param(method, None, True, id=f"{method}-trained", marks=pytest.mark.xfail(
        strict=strict, reason=f"{'' if strict else MACHINE_DEPENDENT}{method}'s train-time mask: {fixed} of "
                              f"zero-shot's errors fixed"))
      for method, fixed, strict in (("dualprompt", "0.05-0.06", True), ("coda-prompt", "0.10-0.28", False))),
]


@pytest.mark.parametrize("method, variant, trained", PROMPT_LEARNING_CASES)
def test_prompt_methods_learn_what_zero_shot_cannot_read(tmp_path, method, variant, trained):
    overrides = [f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false"]
    if not trained:
        overrides += ["train.epochs=0", *UNTRAINED_OVERRIDES.get(method, [])]
    hparams = engine.variant_overrides(method, variant) if variant else None
    metrics = engine.run(load_config("tiny", overrides), "modality_incremental", method, seed=0,
                         variant=variant, hparams=hparams).metrics
    verdict, checks = learns(metrics)
    assert verdict is trained, checks
