"""AV-CIL (Pian et al., ICCV 2023): known values of the dual audio-visual similarity constraint, the
visual attention distillation and the audio-guided attention; the exemplar budget; where it refuses
to run; and it learns on smoke in every scenario it declares (negative control too)."""
import math

import pytest
import torch

from mmcl import engine, reproduce
from mmcl.config import ConfigError
from mmcl.methods.av_cil import (
    AudioGuidedVisualAttention,
    attention_distillation,
    class_centroids,
    class_similarity_loss,
    instance_similarity_loss,
)
from mmcl.methods import method_class
from mmcl.methods.text_anchored import iterate_task_batches

from learning_check import assert_learning_verdict, learning_cases

SIGMA = math.e / (math.e + 1)  # softmax([1, 0])[0]


# ------------------------------------------------------------------------------------------------ D-AVSC
def test_instance_aware_similarity_on_two_samples_whose_teacher_had_the_pairs_crossed():
    # Student: audio i matches visual i (cosines I). Teacher: visual features swapped (cosines [[0, 1], [1, 0]]).
    # Every row at scale s = 1/T: student (σ, 1-σ), teacher (1-σ, σ), KL = (2σ - 1) s with σ = sigmoid(s);
    # visual-to-audio the same. At T = 1: tanh(1/2); at T = 0.5: 2 tanh(1).
    eye = torch.eye(2)
    crossed = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(instance_similarity_loss(eye, eye, eye, crossed, 1.0)) == pytest.approx(math.tanh(0.5), rel=1e-5)
    assert float(instance_similarity_loss(eye, 3 * eye, eye, crossed, 0.5)) == pytest.approx(2 * math.tanh(1.0),
                                                                                                rel=1e-5)


def test_class_aware_similarity_on_three_samples_of_two_classes():
    # labels [0, 0, 1]; student audio = visual = [(1,0), (1,0), (0,1)]: centroids (1,0), (0,1).
    # Teacher: same audio, every visual (1,0): visual centroids (1,0), (1,0).
    # Audio -> visual centroids: teacher rows uniform, student rows (σ, 1-σ) or (1-σ, σ):
    #   KL = log((e + 1) / 2) - 1/2 on each of the three rows.
    # Visual -> audio centroids: teacher rows all (σ, 1-σ); student rows 1, 2 the same, row 3 (1-σ, σ):
    #   KL = 0, 0, tanh(1/2); mean tanh(1/2) / 3.
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    old_visual = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    expected = 0.5 * (math.log((math.e + 1) / 2) - 0.5 + math.tanh(0.5) / 3)
    loss = class_similarity_loss(features, features, features, old_visual, labels, 1.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_class_centroids_average_normalised_features_in_label_order():
    centroids = class_centroids(torch.tensor([[0.0, 5.0], [3.0, 0.0], [0.0, 1.0]]), torch.tensor([2, 0, 0]))
    assert torch.allclose(centroids, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))  # class 0, then class 2


def test_similarity_constraints_are_zero_when_the_features_are_the_teachers():
    generator = torch.Generator().manual_seed(0)
    audio, visual = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 0])
    assert float(instance_similarity_loss(audio, visual, audio.clone(), visual.clone(), 0.5)) == pytest.approx(0, abs=1e-6)
    assert float(class_similarity_loss(audio, visual, audio, visual, labels, 0.5)) == pytest.approx(0, abs=1e-6)
    assert float(instance_similarity_loss(audio, visual, visual, audio, 0.5)) > 0.01  # a different teacher


# ------------------------------------------------------------------------------------------------- VAD
def test_attention_distillation_is_the_kl_of_the_teachers_maps_averaged_over_frames():
    old = torch.tensor([[[0.5, 0.5], [0.2, 0.8]]]).log()  # one sample, two frames, two patches
    new = torch.tensor([[[0.25, 0.75], [0.2, 0.8]]]).log()
    # frame 1: 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75) = 0.5 log(4/3); frame 2: 0
    assert float(attention_distillation(new, old)) == pytest.approx(0.25 * math.log(4 / 3), rel=1e-5)
    assert float(attention_distillation(old, old)) == pytest.approx(0.0, abs=1e-7)


def test_audio_guided_attention_by_hand():
    attention = AudioGuidedVisualAttention(dim=2, hidden=2)
    with torch.no_grad():
        attention.visual.weight.copy_(torch.eye(2)), attention.visual.bias.zero_()
        attention.audio.weight.zero_()
        attention.score.weight.copy_(torch.tensor([[1.0, 0.0]]))
    pooled = torch.tensor([[[1.0, 1.0]]])  # one sample, one frame
    patches = torch.tensor([[[[2.0, 0.0], [0.0, 3.0]]]])  # normalised: (1,0) scores tanh(1), (0,1) scores 0
    visual, log_attention = attention(torch.tensor([[1.0, 0.0]]), pooled, patches)
    alpha = torch.softmax(torch.tensor([math.tanh(1.0), 0.0]), dim=0)
    assert torch.allclose(log_attention.exp(), alpha.view(1, 1, 2))
    assert torch.allclose(visual, pooled[:, 0])  # the gate starts at 0: the pooled embedding alone
    with torch.no_grad():
        attention.gate.fill_(1.0)
    visual, _ = attention(torch.tensor([[1.0, 0.0]]), pooled, patches)
    assert torch.allclose(visual, torch.tensor([[1 + 2 * alpha[0], 1 + 3 * alpha[1]]]))


# ------------------------------------------------------------------------------------ the method on smoke
def test_buffer_keeps_per_class_exemplars_and_the_constraints_start_at_zero(smoke_config):
    method, _ = engine.build_run(smoke_config, "class_incremental", "av-cil", seed=0)
    assert method.hparams.per_class == 5  # replay's and iCaRL's literature budget
    first, second = method.context.tasks
    method.context.seen_classes = list(first.classes)
    method.begin_task(first)
    assert method.teacher is None
    method.end_task(first)
    available = {str(c): int((first.train.labels == c).sum()) for c in first.classes}
    assert method.buffer.counts() == {c: min(5, n) for c, n in available.items()}
    record = method.run_record()["buffer"]
    assert record["size"] == sum(min(5, n) for n in available.values()) and record["selection"] == "random"
    method.context.seen_classes += second.classes
    method.begin_task(second)  # the teacher is the model as it is now: every constraint is zero
    batch = next(iter(iterate_task_batches(second.train, 4, method.context.device)))
    _, parts = method.training_loss(batch, second)
    assert parts["avsc_instance"] == pytest.approx(0, abs=1e-6)
    assert parts["avsc_class"] == pytest.approx(0, abs=1e-6)
    assert parts["vad"] == pytest.approx(0, abs=1e-6)


def test_refuses_a_benchmark_without_audio_and_a_stream_without_both_modalities(smoke_config):
    with pytest.raises(ConfigError, match=r"benchmarks\.ego-activities\.modalities: av-cil needs audio"):
        engine.build_run(smoke_config, "class_incremental", "av-cil", seed=0, benchmark="ego-activities")
    with pytest.raises(ConfigError, match="not compatible with scenario 'modality_incremental'"):
        engine.build_run(smoke_config, "modality_incremental", "av-cil", seed=0)
    cls = method_class("av-cil")
    assert cls.inapplicable(["video", "acc", "gyro"]) == "av-cil needs audio in every sample"
    assert cls.inapplicable(["text"]) == "av-cil needs audio and video or image in every sample"
    assert cls.inapplicable(["image", "audio"]) is None
    # The sweeps leave it out where it cannot run, and keep every other method there.
    jobs = reproduce.sweep_jobs(smoke_config, "class_incremental", benchmarks=["av-events", "ego-activities"])
    pairs = {(job["benchmark"], job["method"]) for job in jobs}
    assert ("av-events", "av-cil") in pairs and ("ego-activities", "av-cil") not in pairs
    assert ("ego-activities", "icarl") in pairs


def test_family_scenarios_and_grid():
    cls = method_class("av-cil")
    assert cls.family == "rehearsal"
    assert cls.compatible_scenarios == ("class_incremental", "domain_incremental")
    assert cls.tuning_grid == {"lr_scale": [0.3, 1.0, 3.0], "avsc_weight": [0.5, 2.0]}


@pytest.mark.parametrize("method, scenario, trained", learning_cases(["av-cil"]))
def test_av_cil_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")
