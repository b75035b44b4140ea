"""Cross-modality mixture-of-experts adapters on the frozen open_clip towers (Paper B's "MMEncoder").

Reconstructed from the published description; components marked *(design choice)* are ours.

Every modality keeps its own frozen tower (the vision tower for frames, spectrograms and inertial
images, the text tower for transcripts). The first ``depth - L`` blocks of each tower run once,
without gradients (:meth:`CrossModalMoEAdapters.prefix`). The last ``L`` blocks run in
*lock-step* over the modalities: at step ``i`` every modality passes its tower's block
``depth - L + i``, then the adapter of modality ``a`` at that step reads the pooled summary
tokens of the *other* modalities at the same depth::

    h   = LN(x_a)                                             x_a: [n, N, W_a]
    u   = h + CrossAttention(h, {c_b : b != a} + null slot)   c_b: [B, W_b] pooled tokens of b
    y   = sum_e g_e(u) * Expert_e(u)                          top-k gates, sum_e g_e = 1
    x_a = x_a + s_a * y                                       s_a: learnable scale

An expert is a bottleneck MLP ``up(GELU(down(u)))`` whose up-projection starts at zero, so the
adapted towers start exactly at the frozen model *(design choice)*. Each expert owns its row of
the router, so freezing an expert (after a task, by influence) also fixes how strongly any input
calls it *(design choice)*. Experts are evaluated densely as two matrix products of width
``E * hidden`` and combined with the sparse gates: for the small widths of adapters this is
faster than dispatching tokens, and an unselected expert still gets exactly zero gradient from a
token (its gate is zero).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl.models.backbone import MultiModalEncoder, TowerState


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class AdapterSettings:
    """Shape and behaviour of the adapters: the MoE adapters' ``methods.moe-adapters.adapter.*`` keys."""

    layers: int = pydantic.Field(2, ge=1)  # L: adapters after each of the last L blocks of every tower
    num_experts: int = pydantic.Field(4, ge=1)  # E (1: a single bottleneck adapter, no router)
    top_k: int = pydantic.Field(2, ge=1)  # k experts per token (or sample)
    expert_hidden: int = pydantic.Field(16, ge=1)  # bottleneck width of one expert
    routing: Literal["token", "sample"] = "token"  # route every token, or one decision per sample (design choice)
    cross_attention: bool = True  # False: modality-specific adapters only (an ablation)
    attention_dim: int = pydantic.Field(32, ge=1)
    attention_heads: int = pydantic.Field(2, ge=1)
    null_slot: bool = True  # a learned "attend to nothing" key/value beside the other modalities (design choice)
    context_pooling: Literal["summary", "mean"] = "summary"  # CLS / EOT token, or mean of tokens
    scale_init: float = 1.0  # initial value of the residual scale s_a (up-projections start at zero)

    @pydantic.field_validator("top_k")
    @classmethod
    def _top_k_fits(cls, top_k: int, info: pydantic.ValidationInfo) -> int:
        experts = info.data.get("num_experts")
        if experts is not None and top_k > experts:
            raise ValueError(f"must be at most num_experts ({experts}), got {top_k}")
        return top_k

    @pydantic.field_validator("attention_heads")
    @classmethod
    def _heads_divide_dim(cls, heads: int, info: pydantic.ValidationInfo) -> int:
        dim = info.data.get("attention_dim")
        if dim is not None and dim % heads:
            raise ValueError(f"must divide attention_dim ({dim}), got {heads}")
        return heads


@dataclass
class AdapterOutput:
    """Per-modality embeddings ``[B, D]`` (not normalised), the load-balancing loss, routing mass."""

    embeddings: dict[str, torch.Tensor]
    balance_loss: torch.Tensor
    routing_mass: dict[str, torch.Tensor] = field(default_factory=dict)  # adapter name -> [E] gate sums


class Expert(nn.Module):
    """A bottleneck MLP ``W -> hidden -> W`` and its router row (its key in the router)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.down = nn.Parameter(torch.empty(width, hidden))
        self.down_bias = nn.Parameter(torch.zeros(hidden))
        self.up = nn.Parameter(torch.zeros(hidden, width))  # zero: the adapter starts as the identity
        self.up_bias = nn.Parameter(torch.zeros(width))
        self.router_row = nn.Parameter(torch.empty(width))
        nn.init.kaiming_uniform_(self.down.T, a=5**0.5)  # as nn.Linear(width, hidden)
        # Random router rows: with all rows equal every token would pick the same first k experts.
        nn.init.uniform_(self.router_row, -width**-0.5, width**-0.5)


def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits ``[n, E]`` -> (gates, probabilities, selected mask), all ``[n, E]``.

    ``probabilities`` is the softmax over all experts (for the load-balancing term); ``gates`` is
    the softmax over the k largest logits only (zero elsewhere), so each row of gates sums to one.
    """
    probabilities = logits.softmax(dim=-1)
    k = min(k, logits.shape[-1])
    top_values, top_index = logits.topk(k, dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, top_index, top_values.softmax(dim=-1))
    selected = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_index, True)
    return gates, probabilities, selected


def load_balancing_loss(probabilities: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balance term ``E * sum_e f_e * P_e`` (1 when routing is uniform).

    ``f_e``: fraction of the routing decisions ``selected [n, E]`` that went to expert e;
    ``P_e``: mean router probability of expert e over the n tokens.
    """
    num_experts = probabilities.shape[-1]
    fraction = selected.float().mean(dim=0) / selected.float().sum(dim=-1).mean().clamp(min=1)
    return num_experts * (fraction * probabilities.float().mean(dim=0)).sum()


class MixtureOfExperts(nn.Module):
    """E bottleneck experts with a top-k router. Experts frozen by :meth:`freeze` never train again."""

    def __init__(self, width: int, num_experts: int, top_k: int, hidden: int, routing: str):
        super().__init__()
        self.experts = nn.ModuleList(Expert(width, hidden) for _ in range(num_experts))
        self.router_bias = nn.Parameter(torch.zeros(num_experts)) if num_experts > 1 else None
        self.top_k, self.routing = top_k, routing
        self.register_buffer("frozen", torch.zeros(num_experts, dtype=torch.bool))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, u: torch.Tensor, frames: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``u [n, N, W]`` -> (output ``[n, N, W]``, balance loss, gate mass per expert ``[E]``)."""
        n, tokens, width = u.shape
        flat = u.reshape(-1, width)
        E = self.num_experts
        down = torch.stack([e.down for e in self.experts], dim=1).reshape(width, -1)  # [W, E*h]
        up = torch.cat([e.up for e in self.experts], dim=0)  # [E*h, W]
        hidden = F.gelu(flat @ down + torch.cat([e.down_bias for e in self.experts]))  # [n*N, E*h]
        if E == 1:  # a single adapter: no router
            out = hidden @ up + self.experts[0].up_bias
            mass = torch.full((1,), float(flat.shape[0]), device=u.device)
            return out.view(n, tokens, width), u.new_zeros(()), mass
        router = torch.stack([e.router_row for e in self.experts])  # [E, W]
        if self.routing == "sample":  # one decision per sample: mean over its tokens (and frames)
            summary = u.mean(dim=1).view(-1, frames, width).mean(dim=1)  # [B, W]
            gates, probabilities, selected = top_k_gates(summary @ router.T + self.router_bias, self.top_k)
            token_gates = gates.repeat_interleave(frames * tokens, dim=0)  # [n*N, E]
        else:
            gates, probabilities, selected = top_k_gates(flat @ router.T + self.router_bias, self.top_k)
            token_gates = gates
        weighted = (hidden.view(-1, E, hidden.shape[-1] // E) * token_gates.unsqueeze(-1).to(hidden.dtype))
        out = weighted.reshape(hidden.shape) @ up + token_gates.to(up.dtype) @ torch.stack([e.up_bias for e in self.experts])
        return out.view(n, tokens, width), load_balancing_loss(probabilities, selected), gates.detach().float().sum(0)

    def freeze(self, experts: list[int]) -> None:
        """Freeze ``experts`` (indices) for good: their parameters stop requiring gradients."""
        for index in experts:
            self.frozen[index] = True
            for parameter in self.experts[index].parameters():
                parameter.grad = None  # a gradient left from the last step would read as "received"
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Set ``requires_grad`` from the ``frozen`` buffer (after loading a checkpoint too)."""
        for expert, frozen in zip(self.experts, self.frozen.tolist()):
            expert.requires_grad_(not frozen)

    def expert_gradient_norms(self) -> torch.Tensor:
        """``[E]``: L2 norm of each expert's current gradient (0 where it has none)."""
        norms = []
        for expert in self.experts:
            grads = [p.grad.detach().float().pow(2).sum() for p in expert.parameters() if p.grad is not None]
            norms.append(torch.stack(grads).sum().sqrt() if grads else torch.zeros((), device=self.frozen.device))
        return torch.stack(norms)


class CrossModalAttention(nn.Module):
    """Tokens of one modality attend to pooled tokens of the other modalities (and a null slot)."""

    def __init__(self, width: int, context_widths: dict[str, int], dim: int, heads: int, null_slot: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention_dim {dim} is not divisible by attention_heads {heads}")
        self.heads = heads
        self.query = nn.Linear(width, dim)
        # Each source modality has its own norm and key/value map: towers differ in width and scale.
        self.context_norms = nn.ModuleDict({m: nn.LayerNorm(w) for m, w in context_widths.items()})
        self.key_values = nn.ModuleDict({m: nn.Linear(w, 2 * dim) for m, w in context_widths.items()})
        self.null = nn.Parameter(torch.zeros(2, dim)) if null_slot else None
        self.out = nn.Linear(dim, width)

    def forward(self, h: torch.Tensor, context: dict[str, torch.Tensor], frames: int) -> torch.Tensor:
        """``h [B*frames, N, W]``, ``context`` source -> ``[B, W_b]`` -> ``[B*frames, N, W]``."""
        slots = [self.key_values[m](self.context_norms[m](c)) for m, c in context.items() if m in self.key_values]
        batch = h.shape[0] // frames
        if self.null is not None:
            slots.append(self.null.reshape(1, -1).expand(batch, -1).to(h.dtype))
        if not slots:
            return torch.zeros_like(h)
        keys, values = torch.stack(slots, dim=1).to(h.dtype).repeat_interleave(frames, dim=0).chunk(2, dim=-1)
        q = self.query(h)
        n, tokens, dim = q.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [n, S, dim] -> [n, heads, S, dim / heads]
            return t.view(n, t.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(q), split(keys), split(values))  # [n, heads, N, d]
        return self.out(attended.transpose(1, 2).reshape(n, tokens, dim))


class ModalityAdapter(nn.Module):
    """The adapter of one modality after one block: cross-attention, MoE, scaled residual."""

    def __init__(self, width: int, context_widths: dict[str, int], settings: AdapterSettings):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attention = CrossModalAttention(width, context_widths, settings.attention_dim, settings.attention_heads,
                                             settings.null_slot) if settings.cross_attention and context_widths else None
        self.moe = MixtureOfExperts(width, settings.num_experts, settings.top_k, settings.expert_hidden, settings.routing)
        self.scale = nn.Parameter(torch.tensor(float(settings.scale_init)))

    def forward(self, x: torch.Tensor, context: dict[str, torch.Tensor], frames: int):
        """``x [B*frames, N, W]`` -> (adapted x, balance loss, gate mass ``[E]``)."""
        h = self.norm(x)
        u = h + self.attention(h, context, frames) if self.attention is not None else h
        y, balance, mass = self.moe(u, frames)
        return x + self.scale.to(x.dtype) * y.to(x.dtype), balance, mass


class CrossModalMoEAdapters(nn.Module):
    """All adapters of a run: ``adapters[modality][step]``, steps over the last L blocks.

    The encoder is passed to every call instead of being a sub-module, so that a teacher copy of
    the adapters (a :class:`~mmcl.methods.snapshot.Snapshot`) holds the small adapters only and shares
    the frozen towers, and the frozen prefix can be computed once for student and teacher.
    """

    def __init__(self, encoder: MultiModalEncoder, modalities: list[str], settings: AdapterSettings):
        super().__init__()
        if "text" in modalities and not hasattr(encoder.clip, "token_embedding"):
            raise NotImplementedError("adapters in the text tower need an open_clip native text tower")
        self.settings = settings
        self.modalities = list(modalities)
        depths = [len(encoder.text_blocks) if m == "text" else len(encoder.vision_blocks) for m in self.modalities]
        # One L for all towers, so that they can run in lock-step (at most the shallowest tower).
        self.steps = max(1, min([settings.layers, *depths]))
        widths = {m: self._width(encoder, m) for m in self.modalities}
        self.adapters = nn.ModuleDict({
            m: nn.ModuleList(ModalityAdapter(widths[m], {o: widths[o] for o in self.modalities if o != m}, settings)
                             for _ in range(self.steps))
            for m in self.modalities})

    @staticmethod
    def _width(encoder: MultiModalEncoder, modality: str) -> int:
        return int(encoder.clip.transformer.width) if modality == "text" else encoder.vision_width

    def moe_layers(self) -> dict[str, MixtureOfExperts]:
        """Every mixture, named ``"<modality>.<step>"``."""
        return {f"{m}.{i}": adapter.moe for m, steps in self.adapters.items() for i, adapter in enumerate(steps)}

    # --------------------------------------------------------------------------- the towers
    # The towers run through the encoder's one tower forward (tower_input, run_blocks, tower_output);
    # the adapters need every tower at the same depth, so the last L blocks advance one at a time.
    @torch.no_grad()
    def prefix(self, encoder: MultiModalEncoder, inputs: dict[str, torch.Tensor]) -> dict[str, TowerState]:
        """Run the frozen blocks before the first adapter: no gradients, shared by student and teacher."""
        states = {}
        for modality, x in inputs.items():
            state = encoder.tower_input(modality, x)
            states[modality] = encoder.run_blocks(state, stop=len(encoder.blocks(state.tower)) - self.steps)
        return states

    def _summary(self, encoder: MultiModalEncoder, state: TowerState) -> torch.Tensor:
        """Pooled token of one modality at the current depth: ``[B, W]`` (frames averaged)."""
        x = state.tokens
        if state.tower == "text":
            ids = state.text_ids
            if self.settings.context_pooling == "summary":  # the EOT token, which the text tower pools
                return x[torch.arange(len(x), device=x.device), ids.argmax(dim=-1)]
            valid = (torch.arange(ids.shape[1], device=x.device) <= ids.argmax(dim=-1, keepdim=True)).to(x.dtype)
            return (x * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True)
        if self.settings.context_pooling == "summary" and getattr(encoder.clip.visual, "pool_type", "tok") == "tok":
            pooled = x[:, 0]  # the class token
        else:
            pooled = x.mean(dim=1)
        return pooled.view(-1, state.frames, x.shape[-1]).mean(dim=1)

    def forward(self, encoder: MultiModalEncoder, states: dict[str, TowerState],
                adapter_sets: dict[str, str] | None = None) -> AdapterOutput:
        """The last L blocks of every tower in lock-step with the adapters -> embeddings ``[B, D]``.

        A batch with one modality (modality-incremental) has no other modality to attend to: its
        cross-attention sees the null slot only. ``adapter_sets`` (modality -> modality) runs a
        modality's tokens through another modality's adapters of the same tower (modality-agnostic
        evaluation tries each trained set); by default every modality has its own.
        """
        states = dict(states)
        adapter_sets = adapter_sets or {}
        balance, count, mass = None, 0, {}
        for step in range(self.steps):
            states = {m: encoder.run_blocks(s, stop=s.depth + 1) for m, s in states.items()}
            summaries = {m: self._summary(encoder, s) for m, s in states.items()} \
                if self.settings.cross_attention and len(states) > 1 else {}
            for modality, state in states.items():
                context = {m: c for m, c in summaries.items() if m != modality}
                adapters = self.adapters[adapter_sets.get(modality, modality)]
                tokens, term, gate_mass = adapters[step](state.tokens, context, state.frames)
                states[modality] = replace(state, tokens=tokens)
                balance = term if balance is None else balance + term
                count += 1
                mass[f"{modality}.{step}"] = gate_mass
        embeddings = {m: encoder.tower_output(s) for m, s in states.items()}
        return AdapterOutput(embeddings, balance / max(count, 1), mass)

    def encode(self, encoder: MultiModalEncoder, inputs: dict[str, torch.Tensor]) -> AdapterOutput:
        """Inputs (as in a :class:`~mmcl.data.dataset.Batch`) -> :class:`AdapterOutput`."""
        return self(encoder, self.prefix(encoder, inputs))
