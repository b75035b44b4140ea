"""Continual-learning methods, one per file, in one registry (:data:`mmcl.methods.base.REGISTRY`)."""
from mmcl.methods import ewc, finetune, joint, lwf, replay, zero_shot  # noqa: F401  (registration)
from mmcl.methods import coda_prompt, comm, dualprompt, l2p  # noqa: F401  (registration; prompt methods)
from mmcl.methods import slca  # noqa: F401  (registration; slow learner)
from mmcl.methods import moe_adapters  # noqa: F401  (registration; Paper B)
from mmcl.methods import aper, ranpac, simplecil  # noqa: F401  (registration; prototype methods)
from mmcl.methods import derpp, icarl  # noqa: F401  (registration; rehearsal methods)
from mmcl.methods import av_cil  # noqa: F401  (registration; the audio-visual anchor)
from mmcl.methods.base import REGISTRY, Method, MethodConfig, RunContext, Task, method_class, register

__all__ = ["REGISTRY", "Method", "MethodConfig", "RunContext", "Task", "method_class", "register"]
