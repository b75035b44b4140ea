"""The prototype and rehearsal methods (SimpleCIL, RanPAC, APER, iCaRL, DER++): known values of what
makes each different, and each learns on smoke in every scenario it declares (negative control too)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmcl import engine
from mmcl.data.dataset import Batch
from mmcl.methods import method_class
from mmcl.methods.text_anchored import iterate_task_batches
from mmcl.methods.derpp import derpp_loss
from mmcl.methods.icarl import herding_order
from mmcl.models.exemplars import ReservoirBuffer, reservoir_slot
from mmcl.models.prototypes import PrototypeBank, choose_ridge, ridge_solution

from learning_check import assert_learning_verdict, learning_cases

ZOO = ["simplecil", "ranpac", "aper", "icarl", "derpp"]


# ------------------------------------------------------------------------------ prototypes (SimpleCIL, APER)
def test_prototype_is_the_class_mean_over_every_batch_and_unseen_classes_keep_their_default():
    bank = PrototypeBank(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    bank.add(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]))
    bank.add(torch.tensor([[4.0, 2.0]]), torch.tensor([0]))  # class 0 recurs (a new domain)
    assert torch.allclose(bank.prototypes(), torch.tensor([[3.0, 1.0], [0.0, 4.0], [-1.0, 0.0]]))
    logits = bank.logits(torch.tensor([[1.0, 0.0]]), torch.tensor([0, 2]), scale=10.0)
    assert torch.allclose(logits, torch.tensor([[10 * 3 / math.sqrt(10), -10.0]]))


def test_simplecil_prototypes_are_the_class_means_of_the_frozen_fused_features(smoke_config):
    method, stream = engine.build_run(smoke_config, "class_incremental", "simplecil", seed=0)
    task = method.context.tasks[0]
    method.end_task(task)
    with torch.no_grad():
        features = torch.cat([method.features(b) for b in iterate_task_batches(task.train, 64, method.context.device)])
    for c in task.classes:
        assert torch.allclose(method.bank.prototypes()[c], features[task.train.labels == c].mean(0), atol=1e-6)
    unseen = stream.tasks[1].classes[0]
    assert torch.equal(method.bank.prototypes()[unseen], method.head.weight[unseen])  # its text embedding


# ------------------------------------------------------------------------------------------------ RanPAC
def test_ridge_solution_is_the_closed_form():
    # (G + I)^-1 C with G = [[2, 1], [1, 2]]: (1/8) [[3, -1], [-1, 3]] applied to C = [[1, 0], [0, 2]]
    solution = ridge_solution(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 1.0)
    assert torch.allclose(solution, torch.tensor([[3 / 8, -2 / 8], [-1 / 8, 6 / 8]], dtype=torch.float64))


def test_ridge_choice_scores_each_candidate_on_the_held_out_part():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(20, 6, generator=generator)
    targets = F.one_hot(torch.arange(20) % 3, 3).float()
    candidates = [1e-3, 1.0, 1e3]
    chosen, errors = choose_ridge(features, targets, candidates, torch.Generator().manual_seed(5))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(5))
    fit, held = order[:16], order[16:]
    expected = []
    for ridge in candidates:  # the direct solve on the 16 fitted samples, scored on the other 4
        weights = ridge_solution(features[fit].T @ features[fit], features[fit].T @ targets[fit], ridge)
        expected.append(float(((features[held].double() @ weights - targets[held]) ** 2).mean()))
    assert errors == pytest.approx(expected, rel=1e-5)
    assert chosen == candidates[min(range(3), key=expected.__getitem__)]



def test_ridge_choice_with_fewer_samples_than_features_equals_the_direct_solve():
    # 16 fitted samples, 40 features (RanPAC: a task's few hundred samples, 2048 projected features):
    # the n x n kernel form scores each candidate as the M x M direct solve does
    generator = torch.Generator().manual_seed(1)
    features = torch.relu(torch.randn(20, 40, generator=generator))
    targets = F.one_hot(torch.arange(20) % 4, 4).float()
    candidates = [1e-2, 1.0, 1e2, 1e4]
    chosen, errors = choose_ridge(features, targets, candidates, torch.Generator().manual_seed(3))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    fit, held = order[:16], order[16:]
    h, y = features.double(), targets.double()
    expected = []
    for ridge in candidates:  # float64 throughout, as choose_ridge computes
        weights = ridge_solution(h[fit].T @ h[fit], h[fit].T @ y[fit], ridge)
        expected.append(float(((h[held] @ weights - y[held]) ** 2).mean()))
    assert errors == pytest.approx(expected, rel=1e-9)
    assert len(set(expected)) == 4 and chosen == candidates[min(range(4), key=expected.__getitem__)]

# ------------------------------------------------------------------------------------------------- iCaRL
def test_herding_picks_by_hand_on_two_dimensional_features():
    # mean of the three = (0.533, 0.6). Pick 1: (0.6, 0.8) is closest (0.211). Pick 2: with (1, 0) the
    # picks' mean is (0.8, 0.4), 0.333 from it; with (0, 1) it is (0.3, 0.9), 0.380 away: (1, 0), although
    # (0, 1) is nearer the mean on its own (0.667 vs 0.760), as "closest to the mean" would rank it.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert herding_order(features, 2).tolist() == [2, 0]
    assert herding_order(features, 5).tolist() == [2, 0, 1]  # never a sample twice


# ------------------------------------------------------------------------------------------------- DER++
def test_derpp_loss_on_tiny_tensors():
    loss, parts = derpp_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]),
                             torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]),
                             torch.tensor([[0.0, 0.0]]), torch.tensor([1]), alpha=0.1, beta=0.5)
    ce, mse, ce2 = math.log(1 + math.exp(-2)), (1 + 4) / 2, math.log(2)
    assert parts == pytest.approx({"ce": ce, "logit_mse": mse, "buffer_ce": ce2})
    assert float(loss) == pytest.approx(ce + 0.1 * mse + 0.5 * ce2)
    alone, _ = derpp_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), None, None, None, None, 0.1, 0.5)
    assert float(alone) == pytest.approx(ce)  # empty buffer: plain cross-entropy


def test_reservoir_fills_then_keeps_every_sample_with_probability_capacity_over_seen():
    generator = torch.Generator().manual_seed(0)
    assert [reservoir_slot(n, 3, generator) for n in range(3)] == [0, 1, 2]
    kept, trials = torch.zeros(6), 6000
    for _ in range(trials):
        buffer = ReservoirBuffer(2)
        batch = Batch({"image": torch.arange(6).view(6, 1)}, torch.arange(6), torch.zeros(6, dtype=torch.long))
        buffer.add(batch, torch.arange(6).float().view(6, 1), generator)
        assert len(buffer) == 2 and buffer.seen == 6
        for _, label, _ in buffer.items:
            kept[label] += 1
        assert all(float(p) == label for (_, label, _), p in zip(buffer.items, buffer.payloads))  # payload follows
    assert torch.allclose(kept / trials, torch.full((6,), 2 / 6), atol=0.02)  # binomial sd 0.006


# ---------------------------------------------------------------------------------------------- contract
def test_families_and_scenarios():
    families = {name: method_class(name).family for name in ZOO}
    assert families == {"simplecil": "prototype", "ranpac": "prototype", "aper": "prototype",
                        "icarl": "rehearsal", "derpp": "rehearsal"}
    for name in ZOO:
        assert set(method_class(name).compatible_scenarios) == {
            "class_incremental", "domain_incremental", "modality_incremental"}


def test_aper_adapts_on_the_first_task_only(smoke_config):
    method, stream = engine.build_run(smoke_config, "class_incremental", "aper", seed=0)
    assert [method.trains_on(t) for t in method.context.tasks] == [True, False]
    batch = next(iter(iterate_task_batches(method.context.tasks[0].train, 4, method.context.device)))
    with torch.no_grad():  # the untrained adapter is the identity: adapted features are the frozen ones
        assert torch.allclose(method.adapted(batch), method.prototype_features(batch)[:, method.encoder.embed_dim:])
        assert torch.allclose(method.adapted(batch), method.prototype_features(batch)[:, :method.encoder.embed_dim],
                              atol=1e-6)


@pytest.mark.parametrize("method, scenario, trained", learning_cases(ZOO))
def test_zoo_methods_learn_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


def test_tables_group_methods_by_family():
    from mmcl import results

    labels = ["joint", "simplecil", "icarl", "zero-shot", "comm", "replay~one-per-class", "replay", "lwf", "l2p",
              "ranpac (projection_dim=64)", "ranpac"]
    assert results.sort_methods(labels) == [
        "zero-shot", "lwf", "replay", "replay~one-per-class", "icarl", "l2p", "ranpac", "ranpac (projection_dim=64)",
        "simplecil", "comm", "joint"]
