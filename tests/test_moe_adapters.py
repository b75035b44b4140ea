"""Cross-modality MoE adapters (Paper B): known values of the parts, freezing, growth, learning."""
from __future__ import annotations

import math

import pytest
import torch

from mmcl import engine, training
from mmcl.config import load_config
from mmcl.methods.heads import CosineClassifier
from mmcl.methods.moe_adapters import (
    fuse_embeddings,
    head_rows,
    relation_loss,
    relaxed_alignment_loss,
    strict_alignment_loss,
)
from mmcl.models.moe_adapter import load_balancing_loss, top_k_gates

from learning_check import assert_learning_verdict, learning_cases


# ------------------------------------------------------------------------------ router
def test_top_k_gates_known_values_and_sum_to_one():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 5.0]])
    gates, probabilities, selected = top_k_gates(logits, k=2)
    e = math.e
    expected = torch.tensor([[e / (e + 1), 1 / (e + 1), 0, 0], [0, 1 / (1 + e**2), 0, e**2 / (1 + e**2)]])
    assert torch.allclose(gates, expected, atol=1e-6)
    assert torch.allclose(probabilities, logits.softmax(-1))
    assert selected.tolist() == [[True, True, False, False], [False, True, False, True]]
    random = torch.randn(64, 6)
    for k in (1, 2, 3):
        gates, _, selected = top_k_gates(random, k)
        assert torch.allclose(gates.sum(-1), torch.ones(64))  # over the selected experts
        assert torch.equal(gates > 0, selected) and (selected.sum(-1) == k).all()


def test_load_balancing_is_one_when_uniform_and_larger_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    spread = torch.eye(4, dtype=torch.bool).repeat(2, 1)
    assert load_balancing_loss(uniform, spread).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(8, 1)
    first = torch.zeros(8, 4, dtype=torch.bool)
    first[:, 0] = True
    assert load_balancing_loss(collapsed, first).item() == pytest.approx(4 * 0.97)


# ------------------------------------------------------------------------------ losses
def test_strict_alignment_matches_hand_computed_infonce():
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = za zb^T / 0.5 = [[2, 1.2], [0, 1.6]]; each direction: cross-entropy to the diagonal.
    rows = math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-1.6))
    columns = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-0.4))
    value = strict_alignment_loss({"a": za, "b": 3 * zb}, temperature=0.5)  # scale does not matter
    assert value.item() == pytest.approx(0.25 * (rows + columns), abs=1e-6)


def test_relaxed_alignment_matches_hand_computed_hinge():
    embeddings = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}
    fused = fuse_embeddings(embeddings, "mean")
    # sample 0: both modalities at cosine 1/sqrt(2) of the fused vector; sample 1: both at cosine 1.
    expected = 2 * max(0.0, 1 - 2**-0.5 - 0.2) / 4
    assert relaxed_alignment_loss(embeddings, fused, margin=0.2).item() == pytest.approx(expected, abs=1e-6)
    assert relaxed_alignment_loss(embeddings, fused, margin=0.3).item() == pytest.approx(0.0)


def test_relation_loss_known_value_and_zero_for_same_features():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert relation_loss(student, teacher).item() == pytest.approx(0.5)  # [[0,-1],[-1,0]]^2 averaged
    features = torch.randn(5, 8)
    assert relation_loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_concat_fusion_with_tiled_text_rows_scores_the_mean_cosine():
    embeddings = {"video": torch.randn(3, 4), "audio": torch.randn(3, 4)}
    text = torch.randn(2, 4)
    head = CosineClassifier(head_rows(text, tiles=2), scale=1.0)
    space = torch.tensor([0, 1])
    concat = head(fuse_embeddings(embeddings, "concat"), space)
    unit = torch.nn.functional.normalize
    mean_cos = torch.stack([unit(e, dim=-1) @ unit(text, dim=-1).T for e in embeddings.values()]).mean(0)
    assert torch.allclose(concat, mean_cos, atol=1e-5)


# ----------------------------------------------------------------- two smoke tasks, by hand
@pytest.fixture(scope="module")
def two_tasks(mmcl_cache):
    """Train the two smoke tasks as the engine does (weight decay on, to catch AdamW drifting
    frozen parameters), recording parameters after each task and the gradients of task 1's first step."""
    config = load_config("smoke", ["train.weight_decay=0.1", "train.epochs=1"])
    device = torch.device("cpu")
    method, stream = engine.build_run(config, "class_incremental", "moe-adapters", seed=0, device=device)
    tasks = stream.tasks

    def enter(index):
        method.context.seen_classes = sorted({c for t in tasks[: index + 1] for c in t.classes})
        method.begin_task(tasks[index])

    enter(0)
    engine.train_task(method, tasks[0], [tasks[0].train], config, 0, device, False)
    method.end_task(tasks[0])
    after_first = {n: p.detach().clone() for n, p in method.named_parameters()}
    enter(1)
    batch = next(tasks[1].train.batches(config.train.batch_size)).to(device)
    method.train()
    with torch.no_grad():
        _, fused, teacher = method.forward_features(batch)
        relation_at_start = relation_loss(fused, fuse_embeddings(teacher.embeddings, "mean")).item()
    optimizer = training.make_optimizer(method, config)
    training.train_step(method, batch, tasks[1], optimizer, config, device)
    first_grads = {n: None if p.grad is None else p.grad.clone() for n, p in method.named_parameters()}
    engine.train_task(method, tasks[1], [tasks[1].train], config, 0, device, False)
    method.end_task(tasks[1])
    after_second = {n: p.detach().clone() for n, p in method.named_parameters()}
    return method, tasks, after_first, first_grads, after_second, relation_at_start


def _frozen_expert_names(method, frozen_masks):
    names = []
    for layer, moe in method.adapters.moe_layers().items():
        modality, step = layer.split(".")
        for index, frozen in enumerate(frozen_masks[layer]):
            if frozen:
                names += [f"adapters.adapters.{modality}.{step}.moe.experts.{index}.{n}"
                          for n, _ in moe.experts[index].named_parameters()]
    return names


def test_frozen_experts_get_no_gradient_and_do_not_change(two_tasks):
    method, _, after_first, first_grads, after_second, _ = two_tasks
    layers = method.adapters.moe_layers()
    # After task 0 the most influential expert of every mixture was frozen (q = 1 by default);
    # after task 1 one more: read which were frozen during task 1 from the gradients.
    assert all(int(moe.frozen.sum()) == 2 for moe in layers.values())
    frozen_in_second = {}
    for layer, moe in layers.items():
        modality, step = layer.split(".")
        frozen_in_second[layer] = [first_grads[f"adapters.adapters.{modality}.{step}.moe.experts.{i}.down"] is None
                                   for i in range(moe.num_experts)]
        assert sum(frozen_in_second[layer]) == 1
    names = _frozen_expert_names(method, frozen_in_second)
    assert names
    for name in names:
        assert first_grads[name] is None
        assert torch.equal(after_first[name], after_second[name]), name
    trained = [n for n in after_first if ".experts." in n and n.endswith(".down") and n not in names]
    assert any(not torch.equal(after_first[n], after_second[n]) for n in trained)


def test_relation_loss_is_zero_for_the_unchanged_model(two_tasks):
    assert two_tasks[-1] == pytest.approx(0.0, abs=1e-10)


def test_classifier_grows_without_changing_old_class_weights(two_tasks):
    method, tasks, after_first, first_grads, after_second, _ = two_tasks
    old, new = tasks[0].classes, tasks[1].classes
    grads = first_grads["head.weight"]  # the shared head rule: old rows get no gradient ...
    assert torch.count_nonzero(grads[old]) == 0 and torch.count_nonzero(grads[new]) > 0
    # ... and do not move (weight decay is on in this fixture); the new rows trained.
    assert torch.equal(after_first["head.weight"][old], after_second["head.weight"][old])
    assert not torch.equal(after_first["head.weight"][new], after_second["head.weight"][new])
    weight = method.head.weight
    assert weight.shape[0] == len(tasks[0].classes) + len(tasks[1].classes)
    batch = next(tasks[0].test.batches(8))
    for index in range(2):  # the scored label space grows with the tasks
        space = torch.tensor(sorted(c for t in tasks[: index + 1] for c in t.classes))
        assert method.predict(batch, space).shape == (len(batch), len(space))


def test_domain_incremental_head_keeps_training_because_every_class_recurs(smoke_config):
    method, stream = engine.build_run(smoke_config, "domain_incremental", "moe-adapters", seed=0,
                                      device=torch.device("cpu"))
    assert method.hparams.head.freeze_old_rows  # the method's default head rule
    for task in stream.tasks:
        method.context.seen_classes = sorted({c for t in stream.tasks[: task.index + 1] for c in t.classes})
        method.begin_task(task)
        assert method.head.weight.requires_grad and not method.head.frozen.any(), task.name


def test_adapters_start_as_the_frozen_towers_and_freezing_survives_a_checkpoint(two_tasks):
    method, tasks, *_ = two_tasks
    fresh = type(method)(method.encoder, method.context, method.hparams)  # the frozen towers are shared
    batch = next(tasks[0].test.batches(4))
    with torch.no_grad():
        output = fresh.adapters.encode(fresh.encoder, batch.inputs)
        for modality, x in batch.inputs.items():
            assert torch.allclose(output.embeddings[modality], fresh.encoder.encode(modality, x), atol=1e-5)
    fresh.load_checkpoint_state(method.checkpoint_state())
    for layer, moe in fresh.adapters.moe_layers().items():
        assert torch.equal(moe.frozen, method.adapters.moe_layers()[layer].frozen)
        assert [e.down.requires_grad for e in moe.experts] == [not f for f in moe.frozen.tolist()]


@pytest.mark.parametrize("method, scenario, trained", learning_cases(["moe-adapters"]))
def test_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


# ------------------------------------------------------------------ the modality stream (our reading)
def test_single_modality_cross_attention_reads_the_null_slot_only():
    from mmcl.models.moe_adapter import CrossModalAttention

    torch.manual_seed(0)
    attention = CrossModalAttention(8, {"audio": 6}, dim=4, heads=2, null_slot=True)
    with torch.no_grad():
        attention.null.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]]))  # key, value
    h = torch.randn(3, 5, 8)  # one modality alone: no other modality's summary
    out = attention(h, {}, frames=1)
    # One slot: softmax over it is 1 whatever the query, so every token gets W_o v_null.
    expected = attention.out(torch.tensor([0.5, -1.0, 2.0, 0.0])).expand(3, 5, 8)
    assert torch.allclose(out, expected, atol=1e-6)
    assert CrossModalAttention(8, {"audio": 6}, 4, 2, null_slot=False)(h, {}, 1).eq(0).all()


def test_modality_stream_freezes_experts_of_the_task_modality_only(mmcl_cache):
    config = load_config("smoke", ["train.epochs=1"])
    device = torch.device("cpu")
    method, stream = engine.build_run(config, "modality_incremental", "moe-adapters", seed=0, device=device)
    first = stream.tasks[0]
    assert sorted(method.adapters.modalities) == ["audio", "image"]
    method.context.seen_classes = sorted(first.classes)
    method.begin_task(first)
    engine.train_task(method, first, [first.train], config, 0, device, False)
    method.end_task(first)
    frozen = {name: int(moe.frozen.sum()) for name, moe in method.adapters.moe_layers().items()}
    assert frozen == {f"{m}.{i}": int(m == first.modality) for m in ("image", "audio") for i in (0, 1)}
    # Modality-agnostic: the adapter sets trained so far in the batch's tower (the first modality's).
    batch = next(stream.tasks[1].train.batches(4))
    assert method.agnostic_adapter_sets(batch) == [first.modality]
