"""EWC's Fisher estimate: the per-sample squared gradients computed many samples at once equal a
loop of one-sample backward passes (the definition), with and without the frozen-prefix cache."""
import pytest
import torch
import torch.nn.functional as F

from mmcl import engine
from mmcl.methods.losses import targets_in
from mmcl.methods.text_anchored import iterate_task_batches


def one_sample_at_a_time(method, data, space):
    totals = [torch.zeros_like(p) for _, p in method.tracked]
    for batch in iterate_task_batches(data, 1, space.device):
        method.zero_grad(set_to_none=True)
        F.cross_entropy(method.logits(batch, space), targets_in(space, batch.labels)).backward()
        for total, (_, parameter) in zip(totals, method.tracked):
            total += parameter.grad.detach() ** 2
    method.zero_grad(set_to_none=True)
    return totals


@pytest.mark.parametrize("scenario, cached", [("class_incremental", "true"), ("class_incremental", "false"),
                                              ("domain_incremental", "true")])  # video+audio; +text
def test_squared_gradients_equal_the_one_sample_loop(tmp_path, scenario, cached):
    from mmcl.config import load_config

    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", f"runtime.prefix_cache={cached}"])
    method, stream = engine.build_run(config, scenario, "ewc", seed=0)
    task = method.context.tasks[0]
    method.context.seen_classes = sorted(task.classes)
    with torch.no_grad():  # move the trainable block and the head off their initial values
        for _, parameter in method.tracked:
            parameter.add_(0.05 * torch.randn_like(parameter))
    data = task.train.subset(torch.arange(min(12, len(task.train))))
    space = method.context.seen_label_space()
    method.train()
    method.encoder.eval()  # as in end_task, right after training
    expected = one_sample_at_a_time(method, data, space)
    got = method.squared_gradients(data, space)
    assert len(got) == len(expected) > 2  # the last block's parameters and the head
    for name_parameter, value, reference in zip(method.tracked, got, expected):
        assert reference.abs().sum() > 0, name_parameter[0]
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-9)
