"""AV-CIL (Pian, Mo, Guo & Tian, "Audio-Visual Class-Incremental Learning", ICCV 2023): the
audio-visual class-incremental method published on AVE. Reconstructed from the published
description; what is ours is listed in ``docs/methods/zoo.md``.

The model: the audio and the visual modality through their towers (the vision tower's last
``trainable_blocks`` train, as in every trained baseline), an audio-guided visual attention
(:class:`AudioGuidedVisualAttention`: the audio embedding weighs the visual patch tokens of every
frame; the attended feature is added to the frame's pooled embedding through a gate that starts at
zero, so the untrained model is the zero-shot model), the shared fusion (:func:`~mmcl.methods.text_anchored.fuse`,
every modality of the sample) and the text-initialised cosine head. Against forgetting, with the
previous task's model as teacher (a :class:`~mmcl.methods.snapshot.Snapshot`), on the task's batch and
a replay batch of the exemplar memory (the shared :class:`~mmcl.models.exemplars.ExemplarBuffer`,
``per_class`` random exemplars per class as replay and iCaRL)::

    L = CE + avsc_weight * (L_instance + class_weight * L_class) + vad_weight * L_vad

- D-AVSC, :func:`instance_similarity_loss` and :func:`class_similarity_loss`: the audio-to-visual and
  visual-to-audio similarity distributions of the student (over the batch's samples, and over the
  batch's class centroids) are kept at the teacher's (KL divergence);
- VAD, :func:`attention_distillation`: the audio-guided visual attention maps are kept at the
  teacher's (KL divergence per frame).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.config import ConfigError
from mmcl.data.dataset import Batch
from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.losses import targets_in
from mmcl.methods.snapshot import Snapshot
from mmcl.methods.text_anchored import ExemplarConfig, TextAnchoredMethod, fuse
from mmcl.models.exemplars import BufferHooks, ExemplarBuffer
from mmcl.seeding import derived_seed, seeded_generator

VISUAL_MODALITIES = ("video", "image")  # the visual modality of a sample, in this order of preference


# ------------------------------------------------------------------------------------ losses
def similarity_distillation(queries: torch.Tensor, keys: torch.Tensor, old_queries: torch.Tensor,
                            old_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_i KL(p̂_i || p_i)`` with ``p_i = softmax_j(cos(queries_i, keys_j) / temperature)`` (the
    student's) and ``p̂_i`` the same of the teacher's ``old_queries`` and ``old_keys``."""
    student = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    teacher = F.normalize(old_queries.float(), dim=-1) @ F.normalize(old_keys.float(), dim=-1).T / temperature
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction="batchmean",
                    log_target=True)


def instance_similarity_loss(audio: torch.Tensor, visual: torch.Tensor, old_audio: torch.Tensor,
                             old_visual: torch.Tensor, temperature: float) -> torch.Tensor:
    """Instance-aware AVSC: each sample's audio against every sample's visual feature, and visual
    against audio, as the teacher had them (the mean of both directions)."""
    return 0.5 * (similarity_distillation(audio, visual, old_audio, old_visual, temperature)
                  + similarity_distillation(visual, audio, old_visual, old_audio, temperature))


def class_centroids(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the normalised ``features`` ``[B, D]`` of each class present, in sorted label order ``[C, D]``."""
    features = F.normalize(features.float(), dim=-1)
    return torch.stack([features[labels == c].mean(dim=0) for c in labels.unique(sorted=True)])


def class_similarity_loss(audio: torch.Tensor, visual: torch.Tensor, old_audio: torch.Tensor,
                          old_visual: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class-aware AVSC: each sample's audio against the visual centroid of every class of the batch,
    and visual against the audio centroids, as the teacher had them (the mean of both directions)."""
    return 0.5 * (similarity_distillation(audio, class_centroids(visual, labels), old_audio,
                                          class_centroids(old_visual, labels), temperature)
                  + similarity_distillation(visual, class_centroids(audio, labels), old_visual,
                                            class_centroids(old_audio, labels), temperature))


def attention_distillation(log_attention: torch.Tensor, old_log_attention: torch.Tensor) -> torch.Tensor:
    """VAD: ``KL(old || new)`` of attention maps over their last axis (log-probabilities ``[..., P]``),
    averaged over every map (sample and frame)."""
    return (old_log_attention.exp() * (old_log_attention - log_attention)).sum(dim=-1).mean()


# ------------------------------------------------------------------------------------ fusion
class AudioGuidedVisualAttention(nn.Module):
    """Audio-guided attention over the visual patch tokens of every frame (the additive form of Tian et
    al.'s AVE model, which AV-CIL's audio-visual module builds on):
    ``α_f = softmax_p(w · tanh(U_v p_{f,p} + U_a a))``; the frame's visual feature is its pooled
    embedding plus ``gate * Σ_p α_{f,p} p_{f,p}``, averaged over frames. ``gate`` starts at 0."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.visual = nn.Linear(dim, hidden)
        self.audio = nn.Linear(dim, hidden, bias=False)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, audio: torch.Tensor, pooled: torch.Tensor, patches: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio [B, D]``, ``pooled [B, F, D]``, ``patches [B, F, P, D]`` -> (visual feature ``[B, D]``,
        log attention ``[B, F, P]``)."""
        audio, patches = F.normalize(audio.float(), dim=-1), patches.float()
        hidden = torch.tanh(self.visual(F.normalize(patches, dim=-1)) + self.audio(audio)[:, None, None, :])
        log_attention = self.score(hidden).squeeze(-1).log_softmax(dim=-1)
        attended = (log_attention.exp().unsqueeze(-1) * patches).sum(dim=-2)
        return (pooled.float() + self.gate * attended).mean(dim=1), log_attention


# ------------------------------------------------------------------------------------ method
@register
class AVCIL(BufferHooks, TextAnchoredMethod):
    card = Card(name="av-cil", family="rehearsal",
                description="audio-visual CIL: audio-guided visual attention, D-AVSC, VAD, exemplars (5 per class)",
                compatible_scenarios=("class_incremental", "domain_incremental"),
                required_modalities=(("audio",), VISUAL_MODALITIES),
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "avsc_weight": [0.5, 2.0]},
                ablations={"no-avsc": {"avsc_weight": 0.0}, "instance-only": {"class_weight": 0.0},
                           "no-vad": {"vad_weight": 0.0}})

    buffer_selection = "random"  # in the run record

    @dataclass(config={"extra": "forbid"})
    class Config(ExemplarConfig):
        avsc_weight: float = Field(1.0, ge=0)  # D-AVSC
        class_weight: float = Field(1.0, ge=0)  # class-aware term, relative to the instance-aware one
        vad_weight: float = Field(1.0, ge=0)  # visual attention distillation
        temperature: float = Field(0.5, gt=0)  # of the similarity distributions (ours; see the docs)
        attention_hidden: int = Field(32, ge=1)  # width of the audio-guided attention

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        for task in context.tasks:
            reason = self.inapplicable(task.modalities)
            if reason:
                raise ConfigError(f"benchmarks.{context.benchmark or '?'}.modalities: {reason}; "
                                  f"task {task.index} has {task.modalities}")
        self.attention = AudioGuidedVisualAttention(encoder.embed_dim, hparams.attention_hidden)
        self.buffer = ExemplarBuffer(hparams.per_class, hparams.buffer_size)
        self.generator = torch.Generator()
        self.teacher = None

    def begin_task(self, task):
        super().begin_task(task)
        self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))
        buffer, self.buffer = self.buffer, None  # the teacher needs the model only, not a copy of the exemplars
        uses_teacher = self.hparams.avsc_weight > 0 or self.hparams.vad_weight > 0
        self.teacher = Snapshot(self) if task.index > 0 and uses_teacher else None
        self.buffer = buffer

    # ---------------------------------------------------------------------------- the model
    def audio_visual(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The audio and (audio-guided) visual features, the fused feature and the attention maps."""
        inputs = batch.inputs
        visual_key = next(m for m in VISUAL_MODALITIES if m in inputs)
        audio = self.encoder.encode("audio", inputs["audio"])
        state = self.encoder.run_blocks(self.encoder.tower_input(visual_key, inputs[visual_key]))
        pooled, patches = self.encoder.visual_patches(state)
        frames = state.frames
        visual, log_attention = self.attention(audio, pooled.view(len(batch), frames, -1),
                                               patches.view(len(batch), frames, *patches.shape[1:]))
        others = {m: self.encoder.encode(m, x) for m, x in inputs.items() if m not in ("audio", visual_key)}
        return {"audio": audio, "visual": visual, "log_attention": log_attention,
                "fused": fuse({"audio": audio, visual_key: visual, **others})}

    def features(self, batch: Batch) -> torch.Tensor:
        return self.audio_visual(batch)["fused"]

    # ---------------------------------------------------------------------------- training
    def training_loss(self, batch, task):
        size = self.hparams.replay_batch_size or self.context.config.train.batch_size
        parts = [batch, *(b.to(batch.labels.device) for b in self.buffer.sample(size, self.generator))]
        current = [self.audio_visual(b) for b in parts]
        space = self.context.seen_label_space()
        labels = torch.cat([b.labels for b in parts])
        logits = self.head(torch.cat([c["fused"] for c in current]), space)
        ce = F.cross_entropy(logits, targets_in(space, labels))
        if self.teacher is None:
            return ce, {"ce": ce.item()}
        with torch.no_grad():
            old = [self.teacher.module.audio_visual(b) for b in parts]
        audio, visual = (torch.cat([c[k] for c in current]) for k in ("audio", "visual"))
        old_audio, old_visual = (torch.cat([o[k] for o in old]) for k in ("audio", "visual"))
        t = self.hparams.temperature
        instance = instance_similarity_loss(audio, visual, old_audio, old_visual, t)
        by_class = class_similarity_loss(audio, visual, old_audio, old_visual, labels, t)
        # maps of different frame counts (video, image) do not stack: averaged per part, weighted by size
        vad = sum(attention_distillation(c["log_attention"], o["log_attention"]) * len(b)
                  for c, o, b in zip(current, old, parts)) / len(labels)
        loss = (ce + self.hparams.avsc_weight * (instance + self.hparams.class_weight * by_class)
                + self.hparams.vad_weight * vad)
        return loss, {"ce": ce.item(), "avsc_instance": instance.item(), "avsc_class": by_class.item(),
                      "vad": vad.item()}

    def end_task(self, task):
        # Its own generator, so that the exemplars depend on the seed and the task only (as replay).
        generator = seeded_generator(self.context.config.seed, "exemplars", task.index)
        self.buffer.add_task(task.train, task.index, generator)
