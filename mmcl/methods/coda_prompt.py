"""CODA-Prompt (Smith et al., CVPR 2023): prompts assembled from attention-weighted components.

On a frozen backbone, each task ``t`` adds ``components_per_task`` prompt components
``P_m [depth, length, width]``, each with a key ``K_m [D]`` and an attention vector ``A_m [D]``.
An image's prompt is ``sum_m alpha_m P_m`` with ``alpha_m = cos(q * A_m, K_m)`` (``q``: the frozen
query, ``*``: element-wise) over the components of the tasks trained so far; it enters the vision
tower by prefix-tuning in the first ``prompt_depth`` blocks. While task ``t`` trains, the
components of earlier tasks are frozen (no gradient: their parameters do not train) and those of
later tasks are not used.

Orthogonality: at the start of its task, every new component (``P``, ``K`` and ``A`` separately,
flattened) is initialised by Gram-Schmidt orthogonal to all earlier components and to each other
(the paper's initialisation); ``ortho_weight`` adds the paper's optional penalty
``||M M^T - I||_F^2`` on the used components (default off).

Head and loss as DualPrompt: cosine head at the class text embeddings, cross-entropy over the current
task's classes as the paper (``ce_over: current``; the ``unmasked`` variant: ``ce_over: seen``).
Multi-modal samples: every visual modality is prompted, text goes through the frozen text tower,
the shared mean fusion combines them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from mmcl.config import ConfigError
from mmcl.methods.base import Frozen, Method, register
from mmcl.methods.card import Card
from mmcl.methods.heads import TextHead
from mmcl.methods.prompting import PromptConfig
from mmcl.methods.text_anchored import fuse
from mmcl.models.prompts import check_prompt_depth, encode_each_modality, encode_prompted, prompt_parameter_groups


def gram_schmidt(previous: torch.Tensor, new: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``new [n, d]`` made orthonormal, each row orthogonal to the span of ``previous [m, d]`` and to
    the rows before it. Where that span already fills the space (``m + i >= d``) a row cannot be
    orthogonal to it: it is kept, normalised."""
    basis: list[torch.Tensor] = []

    def residual(vector):
        for b in basis:
            vector = vector - (vector @ b) * b
        return vector

    for vector in previous.double():
        rest = residual(vector)
        if rest.norm() > eps:
            basis.append(rest / rest.norm())
    rows = []
    for vector in new.double():
        rest = residual(vector)
        rest = rest / rest.norm() if rest.norm() > eps * max(vector.norm(), 1.0) else vector / vector.norm()
        basis.append(rest)
        rows.append(rest)
    return torch.stack(rows).to(new.dtype)


def component_weights(query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``alpha [N, M]``: ``alpha[n, m] = cos(query[n] * attention[m], keys[m])``."""
    attended = query.float().unsqueeze(1) * attention.unsqueeze(0)  # [N, M, D]
    return (F.normalize(attended, dim=-1) * F.normalize(keys, dim=-1).unsqueeze(0)).sum(dim=-1)


def orthogonality_penalty(matrix: torch.Tensor) -> torch.Tensor:
    """``||M M^T - I||_F^2`` of the rows of ``matrix`` (flattened past the first dimension)."""
    rows = matrix.flatten(1)
    return ((rows @ rows.T) - torch.eye(len(rows), device=rows.device)).pow(2).sum()


@register
class CODAPrompt(Method):
    card = Card(
        name="coda-prompt", family="prompt",
        description="CODA-Prompt: attention-weighted prompt components, earlier tasks' components frozen, prefix-tuning",
        tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "components_per_task": [2, 4]},
        ablations={"unmasked": {"ce_over": "seen"}, "ortho-loss": {"ortho_weight": 0.1}})
    frozen = Frozen(hooked_from={"vision": 0})  # prefixes from the first vision block; no backbone weight trains

    @dataclass(config={"extra": "forbid"})
    class Config(PromptConfig):
        components_per_task: int = Field(4, ge=1)  # paper: 100 components over 10 tasks
        prompt_length: int = Field(8, ge=2, multiple_of=2)  # prefix tokens per block: half keys, half values
        prompt_depth: int = Field(1, ge=1)  # prompted blocks, from the first (paper: 5 of ViT-B's 12)
        ortho_weight: float = Field(0.0, ge=0)  # orthogonality penalty (0: Gram-Schmidt initialisation only)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        check_prompt_depth(self.name, hparams.prompt_depth, encoder)
        if not context.tasks:
            raise ConfigError(f"methods.{self.name}: the stream has no tasks (components are added per task)")
        self.head = TextHead(encoder, context, hparams.head, hparams.ce_over)
        c, dim = hparams.components_per_task, encoder.embed_dim
        shape = (c, hparams.prompt_depth, hparams.prompt_length, encoder.vision_width)
        tasks = range(len(context.tasks))
        # one entry per task, so that an earlier task's components can stop training as a whole
        self.pool = nn.ModuleDict({
            "components": nn.ParameterList([nn.Parameter(torch.randn(shape)) for _ in tasks]),
            "component_keys": nn.ParameterList([nn.Parameter(torch.randn(c, dim)) for _ in tasks]),
            "component_attention": nn.ParameterList([nn.Parameter(torch.randn(c, dim)) for _ in tasks]),
        })
        self.register_buffer("tasks_started", torch.zeros((), dtype=torch.long))  # components in use: tasks < this

    def begin_task(self, task):
        self.head.begin_task(task)
        t = task.index
        if t >= int(self.tasks_started):  # a task's components are initialised once (not again on resume)
            with torch.no_grad():
                for parameters in self.pool.values():
                    previous = torch.cat([p.detach().flatten(1) for p in parameters[:t]]) if t else \
                        parameters[t].new_zeros(0, parameters[t][0].numel())
                    fresh = gram_schmidt(previous, parameters[t].detach().flatten(1))
                    parameters[t].copy_(fresh.view_as(parameters[t]))
            self.tasks_started.fill_(t + 1)
        for parameters in self.pool.values():
            for index, parameter in enumerate(parameters):
                parameter.requires_grad_(index == t)

    def used(self, name: str) -> torch.Tensor:
        """The components, keys or attention vectors of the tasks started so far, concatenated."""
        return torch.cat(list(self.pool[name][: int(self.tasks_started)]))

    def prompts(self, query: torch.Tensor) -> torch.Tensor:
        """Per-image prompts ``[N, depth, length, width]`` = ``sum_m alpha_m P_m``."""
        alpha = component_weights(query, self.used("component_keys"), self.used("component_attention"))
        return torch.einsum("nm,mdlw->ndlw", alpha, self.used("components"))

    def embed(self, batch) -> torch.Tensor:
        def prompted(modality, images, query):
            if not int(self.tasks_started):  # before the first task: no components yet
                return self.encoder.encode_visual(images)
            return encode_prompted(self.encoder, images, self.prompts(query), "prefix")

        return fuse(encode_each_modality(self.encoder, batch, prompted))

    def training_loss(self, batch, task):
        ce = self.head.cross_entropy(self.embed(batch), batch.labels, task)
        if not self.hparams.ortho_weight:
            return ce
        ortho = sum(orthogonality_penalty(self.used(name)) for name in self.pool)
        return ce + self.hparams.ortho_weight * ortho, {"ce": ce.item(), "ortho": ortho.item()}

    def representation(self, batch, modality_known=True):
        return self.embed(batch)

    def classify(self, features, label_space):
        return self.head(features, label_space)

    def optimizer_parameter_groups(self):
        return prompt_parameter_groups(self, self.context.config.train.lr * self.hparams.prompt_lr_scale)
