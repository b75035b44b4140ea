"""COMM's components with known values, and COMM / L2P end to end on the smoke profile."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcl.config import ConfigError, load_config
from mmcl.engine import build_run
from mmcl.methods.base import REGISTRY
import dataclasses
import math

from mmcl.methods.comm import (
    blend_weights,
    class_balanced_weights,
    gaussian_epoch_weights,
    promptsrc_regularisation,
    self_regularisation,
)
from mmcl.models.class_statistics import ClassStatistics
from mmcl.models.prompts import as_images, encode_prompted
from mmcl.models.towers import frames_of, mean_over_frames

from learning_check import assert_learning_verdict, learning_cases


def test_blend_weights_sum_to_one_and_follow_relevance():
    logits = torch.tensor([[2.0, 0.0, 1.0, 5.0], [0.0, 3.0, -1.0, 0.0]])
    seen = torch.tensor([True, True, True, False])  # the fourth modality has no pool yet
    agnostic = blend_weights(logits, seen, None, "relevance", 0.5, 0.2)
    expected = F.softmax(logits[:, :3] / 0.5, dim=-1)
    assert torch.allclose(agnostic[:, :3], expected) and agnostic[:, 3].eq(0).all()
    aware = blend_weights(logits, seen, 1, "relevance", 0.5, 0.2)
    assert torch.allclose(aware[:, :3], 0.8 * F.one_hot(torch.tensor([1, 1]), 3) + 0.2 * expected)
    current = blend_weights(logits, seen, 2, "current", 1.0, 0.2)
    assert current.tolist() == [[0, 0, 1, 0], [0, 0, 1, 0]]
    hard = blend_weights(logits, seen, None, "current", 1.0, 0.2)  # agnostic: arg-max of R_t over seen
    assert hard.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    uniform = blend_weights(logits, seen, 0, "uniform", 1.0, 0.2)
    assert torch.allclose(uniform, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0]).expand(2, 4))
    unseen_known = blend_weights(logits, seen, 3, "relevance", 0.5, 0.2)  # no pool: R_t decides
    assert torch.allclose(unseen_known, agnostic)
    for weights in (agnostic, aware, current, hard, uniform):
        assert torch.allclose(weights.sum(dim=-1), torch.ones(2))


def test_gaussian_sampler_reproduces_the_stored_statistics():
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.5])
    root = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.4]])
    data = mean + torch.randn(4000, 3, generator=generator) @ root.T
    bank = ClassStatistics(10, 3, shrinkage=0.0, accumulate=False, jitter=1e-6)  # COMM's statistics
    bank.add(torch.cat([data, data + 10]), torch.tensor([7] * 4000 + [9] * 4000))
    sample_cov = torch.cov(data.T)
    assert torch.allclose(bank.mean(7), data.mean(0), atol=1e-5)
    assert torch.allclose(bank.covariance(7), sample_cov, atol=1e-5)
    samples = bank.sample(torch.tensor([7] * 20000), generator)
    assert torch.allclose(samples.mean(0), bank.mean(7), atol=0.03)
    assert torch.allclose(torch.cov(samples.T), bank.covariance(7), atol=0.03)
    assert torch.allclose(bank.sample(torch.tensor([9] * 2000), generator).mean(0), data.mean(0) + 10, atol=0.1)
    shrunk = ClassStatistics(1, 3, shrinkage=0.5, accumulate=False, jitter=1e-6)
    shrunk.add(data, torch.zeros(4000, dtype=torch.long))
    target = sample_cov.diagonal().mean() * torch.eye(3)
    assert torch.allclose(shrunk.covariance(0), 0.5 * sample_cov + 0.5 * target, atol=1e-5)


def test_self_regularisation_is_zero_when_nothing_moved_and_adaptive_otherwise():
    z = torch.randn(5, 8)
    assert self_regularisation(z, z.clone(), kappa=0.05).item() == 0.0
    moved = z + 0.5 * torch.randn(5, 8)
    shift = (F.normalize(moved, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1)
    assert torch.isclose(self_regularisation(moved, z, 0.05), (shift / (shift + 0.05) * shift).mean())
    assert torch.isclose(self_regularisation(moved, z, 0.05, adaptive=False), shift.mean())


@pytest.fixture
def comm_two_tasks(smoke_config):
    """COMM after training nothing on task 0 (statistics stored), entering task 1."""
    method, stream = build_run(smoke_config, "modality_incremental", "comm", seed=0)
    first, second = stream.tasks
    for task in (first, second):
        method.context.seen_classes = sorted({c for t in stream.tasks[: task.index + 1] for c in t.classes})
        method.begin_task(task)
        if task is first:
            method.end_task(task)
    return method, second


def test_first_occurrence_teacher_is_the_frozen_model(comm_two_tasks):
    # A modality's first task has no earlier pool: the teacher is the frozen model without prompts
    # (before, it was the freshly initialised pool: a pull toward random prompts).
    method, task = comm_two_tasks
    assert method.teachers == {} and method.revisited == []
    batch = next(task.train.batches(8))
    _, parts = method.training_loss(batch, task)
    modality, inputs = task.modality, batch.inputs[task.modality]
    embeddings, query, _ = method.embed(modality, inputs, known=modality)
    frozen = mean_over_frames(query, frames_of(modality, inputs))
    expected = self_regularisation(embeddings, frozen, method.hparams.self_reg_kappa)
    assert parts["self"] == pytest.approx(expected.item(), rel=1e-5) and parts["self"] > 0
    assert "relevance" in parts and "match" in parts


def recur(method, stream_tasks, task, index):
    """``task``'s modality again, as task ``index`` of the stream (a recurring modality)."""
    again = dataclasses.replace(task, index=index, name=f"{task.modality} again")
    method.context.tasks = list(stream_tasks) + [again]
    method.begin_task(again)
    return again


def test_recurring_modality_teacher_is_its_pool_before_the_task(comm_two_tasks):
    method, second = comm_two_tasks
    first = method.context.tasks[0]
    method.end_task(second)
    pool = method.pools[first.modality]
    with torch.no_grad():
        pool.prompts.add_(0.1)  # the pool as task 0 left it (as if trained)
    before = {k: v.clone() for k, v in pool.state_dict().items()}
    again = recur(method, method.context.tasks, first, 2)
    assert method.revisited == [first.modality] and list(method.teachers) == [first.modality]
    assert all(torch.equal(v, before[k]) for k, v in method.teachers[first.modality].module.state_dict().items())
    batch = next(again.train.batches(8))
    _, parts = method.training_loss(batch, again)
    assert parts["self"] == 0.0  # the student starts as its teacher
    with torch.no_grad():
        pool.prompts.add_(0.5)  # training moves the pool; the teacher stays
    assert all(torch.equal(v, before[k]) for k, v in method.teachers[first.modality].module.state_dict().items())
    _, parts = method.training_loss(batch, again)
    assert parts["self"] > 0


def test_momentum_merge_changes_the_pool_when_a_modality_recurs(comm_two_tasks):
    method, second = comm_two_tasks
    first = method.context.tasks[0]
    method.end_task(second)
    pool = method.pools[first.modality]
    again = recur(method, method.context.tasks, first, 2)
    old = pool.prompts.detach().clone()
    with torch.no_grad():
        pool.prompts.add_(1.0)  # what the recurring task learnt
    new = pool.prompts.detach().clone()
    method.end_task(again)
    beta = method.hparams.prompt_momentum
    assert beta == 0.5 and torch.allclose(pool.prompts, beta * old + (1 - beta) * new)
    assert not torch.equal(pool.prompts, new)


def test_promptsrc_term_known_values():
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    logits = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert promptsrc_regularisation(z, 2 * z, logits, logits.clone()).item() == 0.0  # prompts without effect
    z0 = torch.tensor([[0.0, 5.0], [1.0, 0.0]])  # sample 0 moved from (0, 1) to (0.6, 0.8)
    l0 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    l1 = (0.6 + 0.2 + 0 + 0) / 4
    mse = (0.36 + 0.04) / 4
    p = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    kl = (0.5 * math.log(0.5 / p[0].item()) + 0.5 * math.log(0.5 / p[1].item())) / 2  # sample 1: 0
    got = promptsrc_regularisation(z, z0, logits, l0, "l1", 10.0, 1.0)
    assert got.item() == pytest.approx(10 * l1 + kl, rel=1e-5)
    assert promptsrc_regularisation(z, z0, logits, l0, "mse", 2.0, 0.0).item() == pytest.approx(2 * mse, rel=1e-5)
    terms = [promptsrc_regularisation(torch.tensor([[s, 1.0]]), torch.tensor([[0.0, 1.0]]),
                                      torch.tensor([[s, 0.0]]), torch.zeros(1, 2)).item() for s in (0.1, 0.5, 2.0)]
    assert 0 < terms[0] < terms[1] < terms[2]  # grows with the shift


def test_gaussian_epoch_weights_known_values():
    # 4 epochs, mu = 0.75 * 4 = 3, sigma = 0.25 * 4 = 1: exp(-2), exp(-1/2), 1, exp(-1/2), normalised
    raw = torch.tensor([math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5)])
    assert torch.allclose(gaussian_epoch_weights(4, 0.75, 0.25), raw / raw.sum())
    assert gaussian_epoch_weights(1, 0.75, 0.25).tolist() == [1.0]


def test_promptsrc_aggregates_the_pool_over_epochs(tmp_path):
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "train.epochs=2", "methods.comm.self_reg=promptsrc"])
    method, stream = build_run(config, "modality_incremental", "comm", seed=0)
    task = stream.tasks[0]
    method.context.seen_classes = sorted(task.classes)
    method.begin_task(task)
    assert method.teachers == {}
    _, parts = method.training_loss(next(task.train.batches(8)), task)
    assert parts["self"] > 0  # fresh random prompts move the embedding away from the frozen model's
    pool = method.pools[task.modality]
    per_epoch = task.train.num_batches(config.train.batch_size)
    states = []
    for _ in range(2):
        for _ in range(per_epoch):
            with torch.no_grad():
                pool.prompts.add_(1.0)  # stands in for an optimizer step
            method.after_optimizer_step(task)
        states.append(pool.prompts.detach().clone())
    method.realign = lambda *args: None  # one task: nothing to re-align anyway
    method.end_task(task)
    w = gaussian_epoch_weights(2, 0.75, 0.25)
    assert torch.allclose(pool.prompts, w[0] * states[0] + w[1] * states[1], atol=1e-5)
    assert not torch.allclose(pool.prompts, states[1])


def test_realignment_changes_only_the_alignment_layer(comm_two_tasks):
    method, task = comm_two_tasks
    before = {k: v.clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    method.end_task(task)
    after = method.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == {"align.weight"}
    assert len(method.features) == len(method.context.seen_classes)
    assert not any(p.requires_grad for p in method.align.parameters())


def test_class_balanced_weights_known_values():
    weights = class_balanced_weights(torch.tensor([0, 0, 0, 1, 2, 2]), 4)
    assert torch.allclose(weights, torch.tensor([6 / (4 * 3), 6 / 4, 6 / (4 * 2), 0.0]))
    assert torch.allclose(class_balanced_weights(torch.tensor([1, 0, 1, 0]), 2), torch.ones(2))


def test_realignment_gives_current_and_old_classes_the_same_weight(comm_two_tasks, monkeypatch):
    # On smoke the current task brings 12 real samples per class, each old class 64 pseudo-features.
    # Unweighted, re-alignment pulled the current task toward the old classes (measured on smoke
    # with colour spectrograms: audio learned to 67 %, 33 % after re-alignment; 67 % balanced).
    method, task = comm_two_tasks
    seen = []
    real_cross_entropy = F.cross_entropy

    def recording(logits, targets, weight=None, **kwargs):
        seen.append((targets.clone(), None if weight is None else weight.clone()))
        return real_cross_entropy(logits, targets, weight=weight, **kwargs)

    monkeypatch.setattr("mmcl.methods.comm.F.cross_entropy", recording)
    method.end_task(task)
    samples = len(task.train) + method.hparams.realign_samples_per_class * len(method.context.tasks[0].classes)
    epoch_batches = -(-samples // method.hparams.realign_batch_size)
    targets = torch.cat([t for t, _ in seen[:epoch_batches]])
    weight = seen[0][1]
    assert weight is not None and all(torch.equal(weight, w) for _, w in seen)
    counts = torch.bincount(targets, minlength=len(weight)).float()
    assert counts.min() < counts.max()  # imbalanced samples ...
    assert torch.allclose(counts * weight, (counts * weight)[0].expand(len(weight)))  # ... balanced classes


def test_only_the_current_pool_learns(comm_two_tasks):
    method, task = comm_two_tasks
    trainable = {n.split(".")[1] for n, p in method.named_parameters() if p.requires_grad and n.startswith("pools.")}
    assert trainable == {task.modality}


def test_ablations_are_valid_configs():
    for overrides in REGISTRY["comm"].ablations.values():
        REGISTRY["comm"].make_config(overrides)
    assert {"no-self-regularisation", "no-blending-current", "no-blending-uniform", "no-realignment",
            "shared-pool", "self-reg-promptsrc", "no-momentum-merge"} <= set(REGISTRY["comm"].ablations)


@pytest.mark.parametrize("method, scenario, trained", learning_cases(["comm", "l2p"]))
def test_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


@pytest.mark.parametrize("name", ["comm", "l2p"])
def test_head_trains_at_the_prompt_learning_rate(smoke_config, name):
    # L2P trains keys, prompts and head at one rate. At the engine's rate (set for fine-tuning backbone
    # blocks) the text-anchored head stayed at the zero-shot solution: on tiny, the head alone on the
    # frozen audio embeddings reached 10 % in the engine's 30 steps (zero-shot 9 %), 72 % in 300.
    method, _ = build_run(smoke_config, "modality_incremental", name, seed=0)
    rate = {id(p): group.get("lr") for group in method.optimizer_parameter_groups() for p in group["params"]}
    prompt_lr = smoke_config.train.lr * 10  # prompt_lr_scale's default
    assert prompt_lr == pytest.approx(0.03)
    assert rate[id(method.head.weight)] == pytest.approx(prompt_lr)
    pools = [method.pool] if name == "l2p" else list(method.pools.values())
    for pool in pools:
        assert rate[id(pool.keys)] == pytest.approx(prompt_lr) and rate[id(pool.prompts)] == pytest.approx(prompt_lr)
    if name == "comm":
        assert all(rate[id(p)] == pytest.approx(0.3) for p in method.relevance.parameters())
        assert id(method.align.weight) not in rate  # trained only by the re-alignment
    assert set(rate) == {id(p) for p in method.parameters() if p.requires_grad}


def test_a_text_task_is_classified_through_the_frozen_text_tower(tmp_path):
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}"])
    method, stream = build_run(config, "modality_incremental", "comm", seed=0, benchmark="modality-stream-text")
    task = next(t for t in stream.tasks if t.modality == "text")
    method.context.seen_classes = sorted(task.classes)
    method.begin_task(task)
    batch = next(task.train.batches(8))
    embeddings, query, similarities = method.embed("text", batch.inputs["text"], known="text")
    with torch.no_grad():
        expected = method.encoder.encode_text(batch.inputs["text"]).float()
    assert torch.allclose(embeddings, expected) and torch.allclose(query, F.normalize(expected, dim=-1))
    assert similarities == {}  # no prompt pool in the text tower
    loss, parts = method.training_loss(batch, task)
    assert parts["self"] == pytest.approx(0.0, abs=1e-6) and "match" not in parts and loss.requires_grad


def test_l2p_refuses_a_stream_with_text(tmp_path):
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="methods.l2p: .*text task"):
        build_run(config, "modality_incremental", "l2p", seed=0, benchmark="modality-stream-text")


# ------------------------------------------------------------------ class- and domain-incremental
def test_each_tower_of_a_two_modality_sample_is_prompted_from_its_own_pool(smoke_config):
    # av-events: video + audio. Every modality has a pool from the first task; the video frames get
    # the video pool's prompts, the spectrogram the audio pool's (modality-aware, rho = 0 here), and
    # the sample is the mean fusion of the two prompted embeddings.
    config = smoke_config.model_copy(deep=True)
    config.methods["comm"] = {"aware_share": 0.0}
    method, stream = build_run(config, "class_incremental", "comm", seed=0)
    assert method.modalities == ["video", "audio"] and sorted(method.pools) == ["audio", "video"]
    task = stream.tasks[0]
    method.context.seen_classes = sorted(task.classes)
    method.begin_task(task)
    assert method.seen_mask.tolist() == [True, True]
    assert all(p.requires_grad for pool in method.pools.values() for p in pool.parameters())
    with torch.no_grad():
        method.pools["audio"].prompts.add_(3.0)  # tell the pools apart
    batch = next(task.train.batches(4))
    embeddings, queries, similarities = method.embed_batch(batch)
    for modality in ("video", "audio"):
        images = as_images(modality, batch.inputs[modality])
        prompts, _, _ = method.pools[modality](queries[modality])
        expected = mean_over_frames(encode_prompted(method.encoder, images, prompts),
                                    frames_of(modality, batch.inputs[modality]))
        assert torch.allclose(embeddings[modality], expected, atol=1e-6)
        assert list(similarities[modality]) == [modality]  # rho = 0: no other pool is looked up
    fused = method.combine(embeddings)
    assert torch.allclose(fused, (F.normalize(embeddings["video"], dim=-1) + F.normalize(embeddings["audio"], dim=-1)) / 2)
    # R_t's target is each tower input's own modality; no pseudo-queries (every modality is present)
    logits = method.relevance(torch.cat([queries["video"], queries["audio"]]))
    targets = torch.tensor([0] * len(queries["video"]) + [1] * len(queries["audio"]))
    assert torch.isclose(method.relevance_loss(queries), F.cross_entropy(logits, targets))


def test_second_class_incremental_task_revisits_every_pool(smoke_config):
    method, stream = build_run(smoke_config, "class_incremental", "comm", seed=0)
    first, second = stream.tasks
    method.context.seen_classes = sorted(first.classes)
    method.begin_task(first)
    assert method.revisited == [] and method.teachers == {}
    method.end_task(first)
    assert len(method.queries) == 0 and method.features.classes() == sorted(first.classes)  # fused features only
    method.context.seen_classes = sorted(first.classes + second.classes)
    method.begin_task(second)
    assert method.revisited == ["video", "audio"] and sorted(method.teachers) == ["audio", "video"]
    _, parts = method.training_loss(next(second.train.batches(8)), second)
    assert parts["self"] == 0.0  # the student starts as its teacher, in both towers
