"""Teacher snapshots hold model state only: no run data, no context, no earlier teacher, and the
frozen backbone shared rather than copied (so memory does not grow with the number of tasks)."""
import copy
import gc
import types

import torch

from mmcl import engine
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.stream import Task
from mmcl.methods.base import RunContext
from mmcl.methods.snapshot import Snapshot

# Walking into these would reach every loaded module (a function's globals, a class's dict).
_NOT_WALKED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through references, except code and module globals."""
    seen, stack, found = {id(root)}, [root], []
    while stack:
        obj = stack.pop()
        found.append(obj)
        for child in gc.get_referents(obj):
            if id(child) not in seen and not isinstance(child, _NOT_WALKED):
                seen.add(id(child))
                stack.append(child)
    return found


def storage_bytes(tensors) -> dict[int, int]:
    """Bytes of each distinct storage (by data pointer) behind ``tensors``."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def train_tasks(method, stream, config, upto: int) -> None:
    """Train tasks ``0..upto-1`` as the engine does (hooks in order, seen classes grown)."""
    for task in stream.tasks[:upto]:
        method.context.seen_classes = sorted({c for t in stream.tasks[: task.index + 1] for c in t.classes})
        method.begin_task(task)
        engine.train_task(method, task, [task.train], config, seed=0, device=torch.device("cpu"), progress=False)
        method.end_task(task)


def test_lwf_teacher_after_three_tasks_holds_model_state_only(smoke_config):
    config = smoke_config.model_copy(deep=True)
    config.benchmarks["av-events"].num_classes = 6  # three tasks of one pair of twins
    config.benchmarks["av-events"].num_tasks = 3
    config.train.epochs = 1
    method, stream = engine.build_run(config, "class_incremental", "lwf", seed=0, device=torch.device("cpu"))
    train_tasks(method, stream, config, upto=2)
    last = stream.tasks[2]
    method.context.seen_classes = sorted({c for t in stream.tasks for c in t.classes})
    before_fix = copy.deepcopy(method).requires_grad_(False)  # the old teacher: a copy of everything
    method.begin_task(last)
    teacher = method.teacher

    objects = reachable(teacher)
    leaked = [type(o).__name__ for o in objects
              if isinstance(o, (RunContext, Task, MultiModalDataset)) or (isinstance(o, Snapshot) and o is not teacher)]
    assert leaked == []
    assert teacher.module.teacher is None and teacher.module.context is None

    # The frozen backbone is the student's own tensors; what the teacher owns is at most a copy of
    # the trainable part (last blocks, head) and of the method's own buffers.
    # The run's frozen prefix cache (benchmark inputs, cached token states) is the student's too, by reference.
    shared = [o for o in reachable(method.encoder.prefix_cache) if isinstance(o, torch.Tensor)]
    assert teacher.module.encoder.prefix_cache is method.encoder.prefix_cache
    student = dict(storage_bytes(list(method.parameters()) + list(method.buffers()) + shared))
    owned = {ptr: size for ptr, size in storage_bytes(o for o in objects if isinstance(o, torch.Tensor)).items()
             if ptr not in student}
    frozen = [p for p in method.encoder.parameters() if not p.requires_grad]
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert all(any(q is p for q in teacher.module.encoder.parameters()) for p in frozen)
    assert 0 < sum(owned.values()) <= sum(p.nbytes for p in trainable) + sum(b.nbytes for b in method.buffers())
    data_bytes = sum(t.nbytes for t in stream.tasks[0].train.inputs.values())
    assert sum(owned.values()) < data_bytes + sum(p.nbytes for p in frozen)

    # Same teacher outputs as the copy-everything teacher, so LwF's results do not change.
    batch = next(last.train.batches(8))
    old = torch.tensor(method.old_classes)
    assert torch.equal(teacher.module.logits(batch, old), before_fix.eval().logits(batch, old))
    assert teacher.module.head.weight.data_ptr() != method.head.weight.data_ptr()  # a copy, not the student's


def test_snapshot_is_frozen_and_independent_of_later_training():
    module = torch.nn.Linear(3, 2)
    teacher = Snapshot(module)
    with torch.no_grad():
        module.weight.add_(1.0)
    assert not any(p.requires_grad for p in teacher.module.parameters())
    assert not torch.equal(teacher.module.weight, module.weight)
    assert teacher(torch.zeros(1, 3)).requires_grad is False
