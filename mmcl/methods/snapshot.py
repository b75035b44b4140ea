"""Frozen copies of a method's modules (teachers), kept out of its module tree and its checkpoints."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from mmcl.data.dataset import MultiModalDataset
from mmcl.data.stream import Task
from mmcl.methods.base import RunContext
from mmcl.models.backbone import MultiModalEncoder


class Snapshot:
    """A frozen copy of a module held outside the module tree: not in ``state_dict``, not moved.

    Only model state is copied. A teacher is taken once per task, so anything else it copied
    would pile up task after task: the copy never holds a method's :class:`RunContext` (with every
    task's data), a dataset, a task, or an earlier :class:`Snapshot` (each teacher would nest all
    the previous ones); those attributes are ``None`` in the copy. The frozen backbone (the
    parameters of a :class:`MultiModalEncoder` that do not train, and its buffers; see
    :meth:`~mmcl.methods.base.Method.frozen_state_names`) is shared by reference: it never changes
    during a run.
    """

    def __init__(self, module: nn.Module):
        self.module = copy.deepcopy(module, _shared_and_dropped(module)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


# Never part of a teacher's copy: run data, the run's context, and earlier teachers.
_NOT_MODEL_STATE = (RunContext, Task, MultiModalDataset, Snapshot)


def _shared_and_dropped(module: nn.Module) -> dict[int, object]:
    """A ``copy.deepcopy`` memo: frozen backbone tensors map to themselves, non-model state to None.

    Looks at the attributes of every sub-module (one container level deep, so that a list of
    tasks is dropped too); a memo entry makes ``deepcopy`` return the mapped object as is.
    """
    memo: dict[int, object] = {}
    for sub in module.modules():
        if isinstance(sub, MultiModalEncoder):
            for parameter in sub.parameters():
                if not parameter.requires_grad:
                    memo[id(parameter)] = parameter
            for buffer in sub.buffers():
                memo[id(buffer)] = buffer
            memo[id(sub.tokenizer)] = sub.tokenizer  # a large vocabulary, read only
            if sub.prefix_cache is not None:  # the frozen prefix: the teacher's is the student's
                memo[id(sub.prefix_cache)] = sub.prefix_cache
        for value in vars(sub).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
            for item in [value, *items]:
                if isinstance(item, _NOT_MODEL_STATE):
                    memo[id(item)] = None
    return memo
