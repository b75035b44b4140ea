"""DualPrompt, CODA-Prompt and SLCA: their distinctive parts with known values, and each end to end
on the smoke profile (learns beyond zero-shot, with the negative control)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcl.data.dataset import Batch
from mmcl.engine import build_run
from mmcl.methods.coda_prompt import component_weights, gram_schmidt
from mmcl.methods.dualprompt import select_expert
from mmcl.models.class_statistics import ClassStatistics
from mmcl.models.prompts import frozen_query
from mmcl.training import make_optimizer

from learning_check import assert_learning_verdict, learning_cases

NEW_METHODS = ["dualprompt", "coda-prompt", "slca"]


def first(batch: Batch, count: int = 1) -> Batch:
    return Batch({m: x[:count] for m, x in batch.inputs.items()}, batch.labels[:count], batch.domains[:count])


def a_batch(stream, task: int = 0, size: int = 8) -> Batch:
    return next(iter(stream.tasks[task].train.batches(size)))


# ------------------------------------------------------------------------------------ DualPrompt
def test_expert_is_the_most_similar_key():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    query = torch.tensor([[3.0, 1.0], [0.2, 0.9], [-1.0, -0.1]])
    indices, cosine = select_expert(query, keys)
    assert indices.tolist() == [0, 1, 2]  # cosines: (.949, .316, -.894), (.217, .976, -.844), (-.995, -.1, .774)
    assert cosine[0].item() == pytest.approx(3 / 10 ** 0.5)


def test_dualprompt_trains_its_task_expert_and_tests_by_keys(smoke_config):
    method, stream = build_run(smoke_config, "modality_incremental", "dualprompt", seed=0)
    task = stream.tasks[0]
    method.context.seen_classes = list(task.classes)  # as the engine does before begin_task
    method.begin_task(task)
    batch = a_batch(stream)
    loss, _ = method.training_loss(batch, task)
    loss.backward()
    pool = method.pool
    assert pool["e_prompts"].grad[0].abs().sum() > 0 and pool["e_prompts"].grad[1].eq(0).all()
    assert pool["e_keys"].grad[0].abs().sum() > 0 and pool["e_keys"].grad[1].eq(0).all()
    assert pool["g_prompt"].grad.abs().sum() > 0  # the G-prompt is shared by every task
    # Test time: the key closest to the frozen query picks the E-prompt. Key 1 is the first image's
    # own query and key 0 its opposite, so that image takes E-prompt 1.
    one = first(batch)
    (modality, images), = one.inputs.items()
    with torch.no_grad():
        query = frozen_query(method.encoder, images)[0]
        pool["e_keys"].copy_(torch.stack([-query, query]))
        tested = method.embed(one, None)[0]
        assert torch.allclose(tested, method.embed(one, 1)[0])
        assert not torch.allclose(tested, method.embed(one, 0)[0])


def test_dualprompt_fuses_every_modality_of_a_sample(smoke_config):
    method, stream = build_run(smoke_config, "domain_incremental", "dualprompt", seed=0)
    batch = a_batch(stream, size=4)
    assert set(batch.modalities) == {"video", "audio", "text"}
    method.begin_task(stream.tasks[0])
    embedding, _ = method.embed(batch, 0)
    text_only = Batch({"text": batch.inputs["text"]}, batch.labels, batch.domains)
    assert embedding.shape == (4, method.encoder.embed_dim)
    assert not torch.allclose(embedding, method.embed(text_only, 0)[0])  # the visual modalities count too


# ---------------------------------------------------------------------------------- CODA-Prompt
def test_component_weights_are_cosines_of_attended_query_and_key():
    query = torch.tensor([[1.0, 2.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    attention = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    alpha = component_weights(query, keys, attention)
    # q * A_0 = (1, 2, 0): cos with (1, 0, 0) = 1 / sqrt(5); q * A_1 = (0, 0, 0): cosine 0
    assert torch.allclose(alpha, torch.tensor([[1 / 5 ** 0.5, 0.0]]))


def test_gram_schmidt_makes_new_components_orthonormal_to_the_old():
    previous = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, 1.0, 1.0, 0.0], [3.0, 0.0, 1.0, 1.0]])
    rows = gram_schmidt(previous, new)
    assert torch.allclose(rows, torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]]))
    full = gram_schmidt(torch.eye(2), torch.tensor([[3.0, 4.0]]))  # no room left: kept, normalised
    assert torch.allclose(full, torch.tensor([[0.6, 0.8]]))


def test_coda_freezes_earlier_components_and_assembles_prompts(smoke_config):
    method, stream = build_run(smoke_config, "class_incremental", "coda-prompt", seed=0)
    method.begin_task(stream.tasks[0])
    before = {name: params[0].detach().clone() for name, params in method.pool.items()}
    method.context.seen_classes = stream.tasks[0].classes + stream.tasks[1].classes
    method.begin_task(stream.tasks[1])
    for name, params in method.pool.items():
        assert torch.equal(params[0], before[name])  # not re-initialised
        assert not params[0].requires_grad and params[1].requires_grad
        old = params[0].detach().flatten(1)
        new = params[1].detach().flatten(1)
        assert torch.allclose(new @ old.T, torch.zeros(len(new), len(old)), atol=1e-5)  # Gram-Schmidt
    groups = make_optimizer(method, smoke_config).param_groups
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not any(id(params[0]) in optimised for params in method.pool.values())
    loss = method.training_loss(a_batch(stream, task=1), stream.tasks[1])
    loss.backward()
    assert all(params[0].grad is None and params[1].grad.abs().sum() > 0 for params in method.pool.values())
    query = F.normalize(torch.randn(3, method.encoder.embed_dim), dim=-1)
    alpha = component_weights(query, method.used("component_keys"), method.used("component_attention"))
    assert alpha.shape == (3, 2 * method.hparams.components_per_task)
    expected = sum(alpha[:, m, None, None, None] * method.used("components")[m] for m in range(alpha.shape[1]))
    assert torch.allclose(method.prompts(query), expected, atol=1e-5)


# ------------------------------------------------------------------------------ SLCA's statistics
def test_class_statistics_accumulate_exactly_and_sample_their_gaussians():
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5])
    root = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]])
    data = mean + torch.randn(3000, 3, generator=generator) @ root.T
    stats = ClassStatistics(num_classes=3, dim=3, shrinkage=0.0)
    stats.add(data[:1000], torch.full((1000,), 2))
    stats.add(data[1000:], torch.full((2000,), 2))  # a recurring class: statistics of all its features
    assert stats.classes() == [2]
    assert torch.allclose(stats.mean(2).float(), data.mean(0), atol=1e-5)
    assert torch.allclose(stats.covariance(2).float(), torch.cov(data.T), atol=1e-4)
    drawn = stats.sample(torch.full((20000,), 2), torch.Generator().manual_seed(1))
    assert torch.allclose(drawn.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(drawn.T), root @ root.T, atol=0.05)
    shrunk = ClassStatistics(3, 3, shrinkage=0.5)
    shrunk.add(data, torch.full((3000,), 0))
    sample_cov = torch.cov(data.T).double()
    target = torch.eye(3, dtype=torch.float64) * sample_cov.trace() / 3
    assert torch.allclose(shrunk.covariance(0), 0.5 * sample_cov + 0.5 * target, atol=1e-4)
    with pytest.raises(ValueError, match="class 1"):
        stats.sample(torch.tensor([1]))


def test_slca_learning_rates_and_classifier_alignment(smoke_config):
    method, stream = build_run(smoke_config, "class_incremental", "slca", seed=0)
    lr = smoke_config.train.lr
    rates = {id(p): g["lr"] for g in make_optimizer(method, smoke_config).param_groups for p in g["params"]}
    assert rates[id(method.head.weight)] == pytest.approx(10 * lr)
    block = next(method.encoder.vision_blocks[-1].parameters())
    assert rates[id(block)] == pytest.approx(10 * lr * 0.01)  # the slow learner
    # Alignment: two classes with known Gaussians, the head rows start swapped; after alignment
    # each class mean is classified as its class and a frozen row has not moved.
    dim = method.encoder.embed_dim
    centres = torch.eye(dim)[:3] * 2.0
    generator = torch.Generator().manual_seed(0)
    for label in range(3):
        method.statistics.add(centres[label] + 0.1 * torch.randn(50, dim, generator=generator),
                              torch.full((50,), label))
    with torch.no_grad():
        method.head.weight[:3] = centres[[1, 0, 2]]
    method.head.freeze_rows(torch.tensor([False, False, True] + [False] * (len(method.head.weight) - 3)))
    losses = method.align_classifier()
    assert losses[-1] < losses[0]
    space = torch.tensor([0, 1, 2])
    assert method.head(centres, space).argmax(dim=-1).tolist() == [0, 1, 2]
    assert torch.equal(method.head.weight[2].detach(), centres[2])


@pytest.mark.parametrize("method, scenario, trained", learning_cases(NEW_METHODS))
def test_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


@pytest.mark.parametrize("name", NEW_METHODS)
def test_variants_are_valid_configs(name):
    from mmcl.methods.base import REGISTRY

    for overrides in REGISTRY[name].ablations.values():
        REGISTRY[name].make_config(overrides)
    assert REGISTRY[name].family in {"prompt", "fine-tuning"}
