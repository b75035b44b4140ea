"""Behaviour on the embedded tiny profile (a few minutes, the backbone pre-training once):
sequential fine-tuning forgets, joint training is the upper bound, and training learns the
modalities the pre-trained backbone cannot read zero-shot."""
import pytest

from mmcl import engine, kernels
from mmcl.config import load_config
from mmcl.hparams import variant_overrides

from learning_check import UNTRAINED_OVERRIDES, learns, record_margins

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


def test_the_benchmark_is_the_bytes_two_machines_made(tiny):
    # Generator version 5, AVX2 kernels' bytes (mmcl.kernels): made on an Intel Xeon with AVX-512
    # (family 6, model 207) with its kernels pinned, and on the same machine as an AVX2-only CPU
    # (the shared as-avx2 stand-in); the same digest both ways.
    from mmcl.verify import input_digests

    assert input_digests(tiny, ["av-events"])["benchmarks"]["av-events"].startswith("c958099a")  # generator v5


def test_sequential_finetuning_forgets(class_incremental):
    record_margins([{"mode": "standard", "statistic": "finetune_forgetting", "bar": 20.0,
                     "value": class_incremental["finetune"]["forgetting"]}])
    assert class_incremental["finetune"]["forgetting"] > 20.0
    assert class_incremental["finetune"]["bwt"] < -20.0


def test_joint_training_is_the_upper_bound(class_incremental):
    joint = class_incremental["joint"]["final_accuracy"]
    record_margins([{"mode": method, "statistic": "joint_minus_final", "bar": 0.0,
                     "value": joint - summary["final_accuracy"]} for method, summary in class_incremental.items()])
    for method, summary in class_incremental.items():
        assert joint >= summary["final_accuracy"], method


def test_rehearsal_and_lwf_forget_less_than_finetuning(class_incremental):
    record_margins([{"mode": method, "statistic": "forgetting_below_finetune", "bar": 0.0,
                     "value": class_incremental["finetune"]["forgetting"] - class_incremental[method]["forgetting"]}
                    for method in ("replay", "lwf", "icarl", "derpp")])
    for method in ("replay", "lwf", "icarl", "derpp"):
        assert class_incremental[method]["forgetting"] < class_incremental["finetune"]["forgetting"], method


# Zero-shot is near chance (2.5 %) on both modalities; joint training must lift each clearly above it.
# Seed 0, kernels pinned (mmcl.kernels, the same on every x86-64 machine), generator v5, the two-seed
# tuned defaults: audio +44.0 points, depth +15.3. Under generator v4 other draws of the last bits
# gave depth +12.7 to +20.7 (benchmarks/learning_margins.py): depth is the benchmark's weak spot at
# 3 epochs (docs/benchmark.md, benchmarks/epoch_curves.py); its bar, 10 points, lies below every draw
# measured.
GAIN_OVER_ZERO_SHOT = {"audio": 15.0, "depth": 10.0}


def test_training_learns_what_zero_shot_cannot_read(tiny):
    # The backbone was pre-trained on images only: spectrograms and depth maps are new to it.
    zero = engine.run(tiny, "modality_incremental", "zero-shot", seed=0).metrics["modes"]["modality_agnostic"]
    joint = engine.run(tiny, "modality_incremental", "joint", seed=0).metrics["modes"]["modality_agnostic"]
    gains = {m: joint["accuracy_by_modality"][m] - zero["accuracy_by_modality"][m] for m in GAIN_OVER_ZERO_SHOT}
    record_margins([{"mode": m, "statistic": "points_over_zero_shot", "bar": bar, "value": gains[m]}
                    for m, bar in GAIN_OVER_ZERO_SHOT.items()])
    for modality, bar in GAIN_OVER_ZERO_SHOT.items():
        assert gains[modality] > bar, modality


# The prompt methods' (and SLCA's) learning is checked on smoke too (tests/test_comm.py,
# tests/test_prompt_family.py); on tiny they are held to the same check, and their untrained controls
# must fail it. Seed 0, kernels pinned (mmcl.kernels): every verdict below is the same on every
# x86-64 machine. Shares of zero-shot's errors fixed on the audio and depth tasks (bar 0.333),
# generator v5, each method at its two-seed tuned defaults (MMCL_LEARNING_MARGINS): COMM 0.404;
# CODA-Prompt 0.374, unmasked 0.448; SLCA 0.411; unmasked L2P 0.296 and unmasked DualPrompt 0.274,
# below the bar (the variant runs at DualPrompt's validation-chosen rate, lr_scale 1). A change that
# moves the last bits or the tuned defaults measures them again.
# Published L2P masks the logits of other tasks' classes in training, so nothing in its loss moves a
# new modality out of the old classes (v5: 0.159 of zero-shot's errors fixed); DualPrompt's mask does
# the same (0.144). CODA-Prompt's mask does not hold it back at its tuned rate (lr_scale 10).
# These shares are of the reference products: MKL on its pinned branch (mmcl.kernels.mkl_branch), which
# it computes on on every vendor's CPU with AVX2 once mmcl answers its vendor question. Where it does
# not, the backbone is another one and a share near the bar can land on its other side (unmasked L2P
# passed it on an AMD EPYC left to MKL's own dispatch). So the expected failures are strict where the
# products are the reference's.
REFERENCE_PRODUCTS = kernels.mkl_branch() == kernels.pinned_environment().get("MKL_CBWR")
PROMPT_LEARNING_CASES = [
    pytest.param("comm", None, True, id="comm-trained"),
    pytest.param("comm", None, False, id="comm-untrained"),
    pytest.param("l2p", None, True, id="l2p-trained", marks=pytest.mark.xfail(
        strict=REFERENCE_PRODUCTS, reason="L2P's train-time mask: 0.159 of zero-shot's errors fixed (seed 0, "
                                          "generator v5)")),
    pytest.param("l2p", "unmasked", True, id="l2p~unmasked-trained", marks=pytest.mark.xfail(
        strict=REFERENCE_PRODUCTS, reason="unmasked L2P on the v5 stream: 0.296 of zero-shot's errors fixed "
                                          "(audio 45.3 % vs 14.7 %, depth 28.0 % vs 5.3 %), seed 0, kernels pinned")),
    pytest.param("l2p", None, False, id="l2p-untrained"),
    pytest.param("dualprompt", "unmasked", True, id="dualprompt~unmasked-trained", marks=pytest.mark.xfail(
        strict=REFERENCE_PRODUCTS, reason="unmasked DualPrompt at its tuned rate: 0.274 of zero-shot's errors fixed "
                                          "(audio 40.7 % vs 14.7 %, depth 28.7 % vs 5.3 %), seed 0, kernels pinned")),
    *(pytest.param(method, variant, True, id=f"{method}{'~' + variant if variant else ''}-trained")
      for method, variant in (("coda-prompt", None), ("coda-prompt", "unmasked"), ("slca", None))),
    *(pytest.param(method, None, False, id=f"{method}-untrained") for method in ("dualprompt", "coda-prompt", "slca")),
    pytest.param("dualprompt", None, True, id="dualprompt-trained", marks=pytest.mark.xfail(
        strict=REFERENCE_PRODUCTS, reason="DualPrompt's train-time mask: 0.144 of zero-shot's errors fixed (seed 0, "
                                          "kernels pinned)")),
]


@pytest.mark.parametrize("method, variant, trained", PROMPT_LEARNING_CASES)
def test_prompt_methods_learn_what_zero_shot_cannot_read(tmp_path, method, variant, trained):
    overrides = [f"runtime.output_dir={tmp_path / 'runs'}", "runtime.progress=false"]
    if not trained:
        overrides += ["train.epochs=0", *UNTRAINED_OVERRIDES.get(method, [])]
    hparams = variant_overrides(method, variant) if variant else None
    metrics = engine.run(load_config("tiny", overrides), "modality_incremental", method, seed=0,
                         variant=variant, hparams=hparams).metrics
    verdict, checks = learns(metrics)
    assert verdict is trained, checks
