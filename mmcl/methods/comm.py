"""COMM (Jin & Kim, "Continual Learning for Multiple Modalities", arXiv 2503.08064), reconstructed.

Reconstructed from the published description; components marked *(design choice)* are ours (see
``docs/methods/comm.md`` for the equations as implemented). The backbone is frozen; per task of
modality ``m``:

- **Modality-specific prompt pools** (one L2P pool per modality, ``shared_pool`` for the ablation):
  every image's frozen embedding ``q`` picks the top-k prompts of each pool.
- **Relevance-guided blending**: a small classifier ``R_t(q)`` predicts the modality; the prompt
  handed to the tower is ``sum_p w_p(q) P_p(q)`` with ``w = softmax(R_t(q) / tau)`` over the seen
  modalities (modality-agnostic), or ``(1 - rho) onehot(m) + rho softmax(...)`` when the
  modality is known (modality-aware; always so in training). ``R_t`` trains on the current
  queries plus Gaussian pseudo-queries of earlier modalities' classes.
- **Text-anchored cosine classifier**: class weights start at the text embeddings of
  ``"a {modality word} of a {class}"`` for the modality the class was taught in.
- **Intra-modal self-regularisation**, two documented forms (``self_reg``):

  - ``"teacher"``: ``lambda_self * w(s) * s`` with ``s = ||z - z^teacher||^2`` between the prompted
    embedding and the teacher's, ``w(s) = s / (s + kappa)`` (detached) *(design choice)*. The
    teacher is the modality's pool as it was before the current task of that modality; at a
    modality's first task it is the frozen pre-trained model (no prompts). After a task of a
    recurring modality the pool is merged by momentum ``P <- beta P_old + (1 - beta) P_new``.
  - ``"promptsrc"`` (PromptSRC, Khattak et al., ICCV 2023): the prompted embedding and logits of
    the current inputs held close to the frozen pre-trained model's (feature L1 or MSE + logit KL)
    and, at the end of the task, the pool replaced by the Gaussian-weighted average of its states
    at the end of each epoch (:func:`gaussian_epoch_weights`). The momentum merge of a recurring
    modality applies after the aggregation.
- **Class- and domain-incremental streams** (our reading): a sample has several modalities; each
  tower input is prompted from its own modality's pool (blended as above, the modality known), the
  prompted embeddings are mean-fused for the head, every pool of the task's modalities learns and is
  revisited from the second task on, and ``R_t``'s target is each input's own modality.
- **Re-alignment**: per-class Gaussians (mean, shrunk covariance) of the final embeddings; after
  each task, pseudo-features of old classes and real features of the current task fine-tune a
  light alignment layer (a linear map on the embeddings, or the head) *(SLCA-style)*.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from mmcl.config import ConfigError
from mmcl.methods.base import Frozen, Method, register
from mmcl.methods.card import Card
from mmcl.methods.heads import TextHead
from mmcl.methods.losses import targets_in
from mmcl.methods.prompting import PromptPoolConfig
from mmcl.methods.snapshot import Snapshot
from mmcl.methods.text_anchored import fuse
from mmcl.models.class_statistics import ClassStatistics
from mmcl.models.prompts import (
    PromptPool,
    as_images,
    check_prompt_depth,
    encode_prompted,
    frozen_query,
    key_query_matching_loss,
    prompt_parameter_groups,
)
from mmcl.models.towers import frames_of, mean_over_frames
from mmcl.seeding import derived_seed

DEFAULT_MODALITY_WORDS = {"image": "photo", "video": "video", "audio": "sound", "depth": "depth map",
                          "text": "text", "acc": "motion", "gyro": "rotation"}
SHARED = "shared"


# ---------------------------------------------------------------------------------------- pieces
def blend_weights(relevance_logits: torch.Tensor, seen: torch.Tensor, known: int | None, blending: str,
                  temperature: float, aware_share: float) -> torch.Tensor:
    """Weights ``[N, M]`` of the ``M`` modality pools for each image; rows sum to one.

    Args:
        relevance_logits: ``R_t(q)``, ``[N, M]``.
        seen: bool ``[M]``, the pools that exist (modalities trained so far); others get 0.
        known: the index of the known modality (modality-aware), or ``None`` (agnostic).
        blending: ``"relevance"`` (softmax of ``R_t / temperature``; aware: mixed with the known
            one-hot as ``(1 - aware_share) onehot + aware_share softmax``), ``"current"`` (the known
            pool only; agnostic: the arg-max of ``R_t``) or ``"uniform"`` (every seen pool alike).
    """
    n, m = relevance_logits.shape
    seen = seen.to(relevance_logits.device)
    if known is not None and not bool(seen[known]):
        known = None  # a modality without a pool yet (forward-transfer evaluation): R_t decides
    if blending == "uniform":
        return (seen.float() / seen.sum()).expand(n, m).clone()
    masked = relevance_logits.float().masked_fill(~seen, float("-inf"))
    if blending == "current":
        index = torch.full((n,), known, device=masked.device) if known is not None else masked.argmax(dim=-1)
        return F.one_hot(index, m).float()
    relevance = F.softmax(masked / temperature, dim=-1)
    if known is None:
        return relevance
    return (1 - aware_share) * F.one_hot(torch.full((n,), known, device=masked.device), m).float() \
        + aware_share * relevance


def self_regularisation(current: torch.Tensor, frozen: torch.Tensor, kappa: float, adaptive: bool = True
                        ) -> torch.Tensor:
    """``mean_i w(s_i) s_i`` with ``s_i = ||z_i - z_i^frozen||^2`` and ``w(s) = s / (s + kappa)``.

    Both embeddings ``[B, D]`` are L2-normalised first. The weight is detached: it decides how
    much each sample's shift counts (small shifts nearly free, large ones fully penalised), not
    the direction of the gradient. ``adaptive=False``: ``w = 1``.
    """
    shift = (F.normalize(current.float(), dim=-1) - F.normalize(frozen.float(), dim=-1)).pow(2).sum(dim=-1)
    weight = shift.detach() / (shift.detach() + kappa) if adaptive else torch.ones_like(shift)
    return (weight * shift).mean()


def promptsrc_regularisation(features: torch.Tensor, frozen_features: torch.Tensor, logits: torch.Tensor,
                             frozen_logits: torch.Tensor, feature_loss: str = "l1", feature_weight: float = 1.0,
                             logit_weight: float = 1.0) -> torch.Tensor:
    """PromptSRC's mutual-agreement term on a batch: ``feature_weight * d(z, z^0) + logit_weight *
    KL(softmax(l^0) || softmax(l))``.

    ``features``/``frozen_features`` ``[B, D]`` are L2-normalised first; ``d`` is the mean absolute
    (``"l1"``) or mean squared (``"mse"``) difference over all entries. The KL divergence of the
    frozen model's class distribution (``frozen_logits [B, C]``) to the prompted one (``logits``) is
    averaged over the batch. Zero when the prompts change nothing; the frozen side carries no
    gradient.
    """
    z = F.normalize(features.float(), dim=-1)
    z0 = F.normalize(frozen_features.float(), dim=-1).detach()
    distance = (z - z0).abs().mean() if feature_loss == "l1" else (z - z0).pow(2).mean()
    kl = F.kl_div(F.log_softmax(logits.float(), dim=-1), F.log_softmax(frozen_logits.float().detach(), dim=-1),
                  reduction="batchmean", log_target=True)
    return feature_weight * distance + logit_weight * kl


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """PromptSRC's Gaussian prompt aggregation weights ``[epochs]``, summing to one.

    Epoch ``e`` (1-based) gets ``exp(-(e - mu)^2 / (2 sigma^2))`` with ``mu = mean * epochs`` and
    ``sigma = std * epochs`` (both given as fractions of the task's epochs), normalised.
    """
    positions = torch.arange(1, epochs + 1, dtype=torch.float64)
    mu, sigma = mean * epochs, std * epochs
    weights = torch.exp(-(positions - mu) ** 2 / (2 * sigma ** 2))
    return (weights / weights.sum()).float()


def class_balanced_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``[num_classes]`` that give every class of ``targets [N]`` the same
    total weight: ``N / (num_classes * count_c)`` (1 for all when the classes are balanced; classes
    absent from ``targets`` get 0)."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    return torch.where(counts > 0, len(targets) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))


class RelevanceFunction(nn.Module):
    """``R_t``: frozen query ``[N, Dq]`` -> modality logits ``[N, M]`` (linear, or a one-hidden-layer MLP)."""

    def __init__(self, query_dim: int, modalities: int, hidden: int = 0):
        super().__init__()
        self.net = nn.Linear(query_dim, modalities) if hidden <= 0 else nn.Sequential(
            nn.Linear(query_dim, hidden), nn.GELU(), nn.Linear(hidden, modalities))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.net(query.float())


def mean_of(terms: list[torch.Tensor]) -> torch.Tensor:
    """The mean of loss terms (one term: itself, unchanged)."""
    return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------- method
@register
class COMM(Method):
    card = Card(
        name="comm", family="paper",
        description="COMM (reconstructed): modality prompt pools, relevance blending, self-regularisation, re-alignment",
        # modality_incremental first: the ablation study runs on a method's first scenario. Class- and
        # domain-incremental are our reading (docs/methods/comm.md, "COMM on the other scenarios").
        compatible_scenarios=("modality_incremental", "class_incremental", "domain_incremental"),
        # 6 points like every method's grid. self_reg is not in it: its default (teacher) is what the
        # validation search of lr_scale x relevance_lr_scale x self_reg on tiny chose (docs/methods/comm.md).
        tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "relevance_lr_scale": [10.0, 100.0]},
        ablations={
            "no-self-regularisation": {"self_reg": "off", "prompt_momentum": 0.0},
            "self-reg-promptsrc": {"self_reg": "promptsrc"},
            "no-momentum-merge": {"prompt_momentum": 0.0},
            "no-blending-current": {"blending": "current"},
            "no-blending-uniform": {"blending": "uniform"},
            "no-realignment": {"realign": False},
            "shared-pool": {"shared_pool": True},
            # The method's own classifier templates, naming the modality a class is taught in.
            "modality-templates": {"templates": "modality"},
        })
    frozen = Frozen(hooked_from={"vision": 0})  # prompts from the first vision block; no backbone weight trains
    uses_modality_id = True

    @dataclass(config={"extra": "forbid"})
    class Config(PromptPoolConfig):
        # prompt pools: L2P's (PromptPoolConfig), one per modality; head, ce_over: PromptConfig's
        shared_pool: bool = False  # ablation: one pool for all modalities (L2P-like)
        # text-anchored classifier
        # shared: the profile's model.classifier_templates, as every method; modality: modality_templates
        templates: Literal["shared", "modality"] = "shared"
        modality_words: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODALITY_WORDS))
        modality_templates: list[str] = Field(default_factory=lambda: ["a {modality} of a {}."], min_length=1)
        # intra-modal self-regularisation: two documented forms (docs/methods/comm.md), or off
        self_reg: Literal["teacher", "promptsrc", "off"] = "teacher"
        # teacher form (design choice in its exact form)
        self_reg_weight: float = Field(1.0, ge=0)  # lambda_self
        self_reg_kappa: float = Field(0.05, gt=0)  # w(s) = s / (s + kappa)
        self_reg_adaptive: bool = True  # False: w = 1
        # PromptSRC form: agreement with the frozen model + Gaussian prompt aggregation over epochs
        src_feature_loss: Literal["l1", "mse"] = "l1"
        src_feature_weight: float = Field(10.0, ge=0)  # PromptSRC's image-feature weight
        src_logit_weight: float = Field(1.0, ge=0)  # weight of KL(frozen || prompted) on the logits
        src_aggregate: bool = True  # Gaussian-weighted prompt aggregation over the task's epochs
        src_aggregate_mean: float = Field(0.75, gt=0)  # mu as a fraction of the epochs (PromptSRC: 15 of 20)
        src_aggregate_std: float = Field(0.25, gt=0)  # sigma as a fraction of the epochs
        prompt_momentum: float = Field(0.5, ge=0, le=1)  # beta, merge of a revisited pool after its task (0: off)
        # relevance function and blending
        blending: Literal["relevance", "current", "uniform"] = "relevance"
        relevance_hidden: int = Field(0, ge=0)  # 0: linear R_t; >0: MLP with this hidden width
        relevance_temperature: float = Field(1.0, gt=0)  # tau
        relevance_weight: float = Field(1.0, ge=0)  # weight of R_t's cross-entropy in the training loss
        relevance_lr_scale: float = Field(100.0, ge=0)  # R_t's learning rate = this x train.lr (linear map on unit queries)
        relevance_pseudo_batch: int = Field(32, ge=0)  # Gaussian pseudo-queries of earlier modalities per step
        aware_share: float = Field(0.2, ge=0, le=1)  # rho: share of R_t's blend when the modality is known
        # Gaussian statistics and re-alignment (SLCA-style)
        covariance_shrinkage: float = Field(0.1, ge=0, le=1)  # gamma
        realign: bool = True
        realign_layer: Literal["linear", "head"] = "linear"  # what the re-alignment trains
        realign_samples_per_class: int = Field(64, ge=1)  # pseudo-features per old class
        realign_epochs: int = Field(5, ge=0)
        realign_lr: float = Field(0.001, gt=0)
        realign_batch_size: int = Field(128, ge=1)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        h = hparams
        # Every modality of the stream, in order of first appearance; a pool for each from the start.
        self.modalities = list(dict.fromkeys(m for t in context.tasks for m in t.modalities))
        unknown = [m for m in self.modalities if m not in h.modality_words]
        if unknown:
            raise ConfigError(f"methods.comm.modality_words: no word for the stream's modalities {unknown}")
        check_prompt_depth(self.name, h.prompt_depth, encoder)
        pool_names = [SHARED] if h.shared_pool else self.modalities
        self.pools = nn.ModuleDict({name: PromptPool(h.pool_size, h.prompt_length, h.prompt_depth,
                                                     encoder.vision_width, encoder.embed_dim, h.top_k,
                                                     h.prompt_init_std) for name in pool_names})
        self.relevance = RelevanceFunction(encoder.embed_dim, len(self.modalities), h.relevance_hidden)
        text = self.class_text_embeddings()
        self.head = TextHead(encoder, context, h.head, h.ce_over, rows=text)
        # the frozen pre-trained model's classifier (PromptSRC's logit agreement); rebuilt, not checkpointed
        self.register_buffer("zero_shot_weight", F.normalize(text.float(), dim=-1), persistent=False)
        self.align = nn.Linear(encoder.embed_dim, encoder.embed_dim, bias=False)
        nn.init.eye_(self.align.weight)
        self.align.requires_grad_(False)  # trained only by the re-alignment step
        self.register_buffer("seen_mask", torch.zeros(len(self.modalities), dtype=torch.bool))
        # Per-class Gaussians of the frozen queries (R_t's pseudo-queries) and of the final embeddings
        # (re-alignment): a class's statistics are those of its latest task (accumulate=False).
        self.queries = ClassStatistics(context.num_classes, encoder.embed_dim, h.covariance_shrinkage,
                                       accumulate=False, jitter=1e-6)
        self.features = ClassStatistics(context.num_classes, encoder.embed_dim, h.covariance_shrinkage,
                                        accumulate=False, jitter=1e-6)
        # The modality a class is taught in, for classes of single-modality tasks (R_t's pseudo-queries);
        # a class of a multi-modal task has every modality of its samples and no such entry.
        self.class_modality: dict[int, int] = {c: self.modalities.index(t.modalities[0])
                                               for t in context.tasks if len(t.modalities) == 1 for c in t.classes}
        # pool name -> the pool before this task (the task's modalities that were seen before)
        self.teachers: dict[str, Snapshot] = {}
        self.revisited: list[str] = []  # this task's pools that an earlier task trained
        # PromptSRC: pool name -> sum_e w_e P_e of this task
        self.aggregate: dict[str, dict[str, torch.Tensor]] | None = None
        self.steps = 0
        self.generator = torch.Generator()

    def class_text_embeddings(self) -> torch.Tensor:
        """``[C, D]``: the profile's templates (``templates: shared``), or each class named with the
        word of the modality it is taught in (``templates: modality``)."""
        names = self.context.class_names
        if self.hparams.templates == "shared":
            return TextHead.class_text(self.encoder, self.context)
        rows = torch.zeros(len(names), self.encoder.embed_dim, device=self.encoder.mean.device)
        for task in self.context.tasks:  # a multi-modal task: every modality's word (templates averaged)
            templates = [t.replace("{modality}", self.hparams.modality_words[m])
                         for m in task.modalities for t in self.hparams.modality_templates]
            rows[task.classes] = self.encoder.class_text_embeddings([names[c] for c in task.classes], templates)
        return rows

    # ------------------------------------------------------------------------------ forward parts
    def pool_name(self, modality: str) -> str:
        return SHARED if self.hparams.shared_pool else modality

    def weights(self, query: torch.Tensor, known: str | None) -> torch.Tensor:
        """Blend weights ``[N, M]`` over the modality pools (detached from ``R_t``)."""
        with torch.no_grad():
            logits = self.relevance(query)
        index = self.modalities.index(known) if known is not None else None
        seen = self.seen_mask if bool(self.seen_mask.any()) else torch.ones_like(self.seen_mask)
        h = self.hparams
        return blend_weights(logits, seen, index, h.blending, h.relevance_temperature, h.aware_share)

    def prompts(self, query: torch.Tensor, known: str | None, replace: dict[str, PromptPool] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Blended prompts ``[N, depth, k*length, width]`` and each used pool's key similarities."""
        replace = replace or {}
        if self.hparams.shared_pool:
            pool = replace.get(SHARED, self.pools[SHARED])
            prompts, _, similarity = pool(query)
            return prompts, {SHARED: similarity}
        weights = self.weights(query, known)
        blended, similarities = 0.0, {}
        for index, modality in enumerate(self.modalities):
            column = weights[:, index]
            if not bool((column > 0).any()):
                continue
            prompts, _, similarity = replace.get(modality, self.pools[modality])(query)
            blended = blended + column.view(-1, 1, 1, 1).to(prompts.dtype) * prompts
            similarities[modality] = similarity
        return blended, similarities

    def embed(self, modality: str, inputs: torch.Tensor, known: str | None,
              replace: dict[str, PromptPool] | None = None, query: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(prompted embeddings [B, D], queries [N, Dq], key similarities)`` of one modality's batch.

        ``query`` (``[N, Dq]``) can be passed when already computed, to skip the frozen pass.
        Text (a text task in the stream, our reading): the prompt pools live in the vision tower, so a
        text sample's embedding is the frozen text tower's, its query that embedding normalised; the
        task trains the head, ``R_t`` and the re-alignment only.
        """
        if modality == "text":
            with torch.no_grad():
                embeddings = self.encoder.encode_text(inputs).float()
            return embeddings, F.normalize(embeddings, dim=-1) if query is None else query, {}
        images = as_images(modality, inputs)
        query = frozen_query(self.encoder, images) if query is None else query
        prompts, similarities = self.prompts(query, known, replace)
        embeddings = encode_prompted(self.encoder, images, prompts, self.hparams.prompt_style)
        return mean_over_frames(embeddings, frames_of(modality, inputs)), query, similarities

    def classify(self, embeddings: torch.Tensor, label_space: torch.Tensor) -> torch.Tensor:
        return self.head(self.align(F.normalize(embeddings.float(), dim=-1)), label_space)

    @staticmethod
    def combine(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """A sample's representation ``[B, D]``: its one modality's embedding, or (several modalities,
        class- and domain-incremental) the shared mean fusion of the modalities' prompted embeddings."""
        return next(iter(embeddings.values())) if len(embeddings) == 1 else fuse(embeddings)

    @staticmethod
    def regularised(modalities) -> list[str]:
        """The modalities the self-regularisation reads: those with prompts (text is the frozen text
        tower's), or all of them when the sample has text only."""
        return [m for m in modalities if m != "text"] or list(modalities)

    def embed_batch(self, batch, known: bool = True, replace: dict[str, PromptPool] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict]]:
        """Per modality of the batch: (prompted embeddings ``[B, D]``, queries, key similarities).
        Each modality's tower input is prompted from that modality's pool (blended by ``R_t``), the
        modality known to be its own when ``known``."""
        embeddings, queries, similarities = {}, {}, {}
        for modality, inputs in batch.inputs.items():
            embeddings[modality], queries[modality], similarities[modality] = self.embed(
                modality, inputs, known=modality if known else None, replace=replace)
        return embeddings, queries, similarities

    # ------------------------------------------------------------------------------------- hooks
    def current_pools(self, task) -> list[str]:
        """The pools that learn in ``task``: those of its modalities (every modality of a multi-modal task)."""
        return list(dict.fromkeys(self.pool_name(m) for m in task.modalities))

    def begin_task(self, task):
        self.head.begin_task(task)
        self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))
        current = self.current_pools(task)
        seen_before = {self.pool_name(m) for m in task.modalities if bool(self.seen_mask[self.modalities.index(m)])}
        self.revisited = [name for name in current
                          if name in seen_before or (self.hparams.shared_pool and task.index > 0)]
        for modality in task.modalities:
            self.seen_mask[self.modalities.index(modality)] = True
        for name, pool in self.pools.items():  # only the current modalities' pools learn
            pool.requires_grad_(name in current)
        h = self.hparams
        # The teacher is each pool as it was before this task; a modality's first task has none (its
        # pool is freshly initialised): the frozen model, without prompts, is the teacher.
        wanted = (h.self_reg == "teacher" and h.self_reg_weight > 0) or h.prompt_momentum > 0
        self.teachers = {name: Snapshot(self.pools[name]) for name in self.revisited} if wanted else {}
        self.steps = 0
        self.aggregate = None

    def teacher_embeddings(self, modality: str, inputs: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``[B, D]``: the self-regularisation teacher's embedding of the batch (no gradient): the
        pools before this task, or (the modality's first task) the frozen model's normalised
        embedding, which is the query (video: the mean of its frames' queries)."""
        if self.pool_name(modality) not in self.teachers:
            return mean_over_frames(query, frames_of(modality, inputs))
        with torch.no_grad():
            embeddings, _, _ = self.embed(modality, inputs, known=modality, query=query,
                                          replace={name: t.module for name, t in self.teachers.items()})
        return embeddings

    def after_optimizer_step(self, task):
        """PromptSRC form: at the end of every epoch, add ``w_e`` times each current pool to its aggregate."""
        h = self.hparams
        if h.self_reg != "promptsrc" or not h.src_aggregate:
            return
        self.steps += 1
        train = self.context.config.train
        per_epoch = task.train.num_batches(train.batch_size)
        if self.steps % per_epoch:
            return
        epoch = self.steps // per_epoch  # 1-based
        weight = float(gaussian_epoch_weights(train.epochs, h.src_aggregate_mean, h.src_aggregate_std)[epoch - 1])
        aggregate = self.aggregate or {}
        for pool_name in self.current_pools(task):
            state = {name: weight * p.detach().clone() for name, p in self.pools[pool_name].named_parameters()}
            aggregate[pool_name] = state if pool_name not in aggregate else \
                {k: aggregate[pool_name][k] + v for k, v in state.items()}
        self.aggregate = aggregate

    def relevance_loss(self, queries: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of ``R_t``: each modality's queries to that modality, plus pseudo-queries of
        classes taught in modalities absent from the batch (a multi-modal task has every modality:
        none)."""
        present = [self.modalities.index(m) for m in queries]
        device = next(iter(queries.values())).device
        inputs = list(queries.values())
        targets = [torch.full((len(q),), index, device=device) for q, index in zip(inputs, present)]
        old = [c for c in self.queries.classes() if self.class_modality.get(c) not in present]
        if old and self.hparams.relevance_pseudo_batch > 0:
            picks = torch.randint(len(old), (self.hparams.relevance_pseudo_batch,), generator=self.generator)
            labels = torch.tensor(old)[picks]
            inputs.append(F.normalize(self.queries.sample(labels, self.generator).to(device), dim=-1))
            targets.append(torch.tensor([self.class_modality[int(c)] for c in labels], device=device))
        logits = self.relevance(torch.cat(inputs)).masked_fill(~self.seen_mask, float("-inf"))
        return F.cross_entropy(logits, torch.cat(targets))

    def training_loss(self, batch, task):
        h = self.hparams
        embeddings, queries, similarities = self.embed_batch(batch)
        space = self.head.label_space(task)
        logits = self.classify(self.combine(embeddings), space)
        ce = F.cross_entropy(logits, targets_in(space, batch.labels))
        loss, parts = ce, {"ce": ce.item()}
        matched = [similarities[m][self.pool_name(m)] for m in embeddings if self.pool_name(m) in similarities[m]]
        if h.matching_weight > 0 and matched:
            matching = mean_of([key_query_matching_loss(s) for s in matched])
            loss, parts["match"] = loss + h.matching_weight * matching, matching.item()
        regularised = self.regularised(embeddings)
        if h.self_reg == "teacher" and h.self_reg_weight > 0:
            regulariser = mean_of([self_regularisation(
                embeddings[m], self.teacher_embeddings(m, batch.inputs[m], queries[m]), h.self_reg_kappa,
                h.self_reg_adaptive) for m in regularised])
            loss, parts["self"] = loss + h.self_reg_weight * regulariser, regulariser.item()
        elif h.self_reg == "promptsrc":
            terms = []
            for m in regularised:  # each modality against the frozen model's (normalised) embedding of it
                frozen = mean_over_frames(queries[m], frames_of(m, batch.inputs[m]))
                frozen_logits = self.head.scale * F.normalize(frozen.float(), dim=-1) @ self.zero_shot_weight[space].T
                own = logits if len(embeddings) == 1 else self.classify(embeddings[m], space)
                terms.append(promptsrc_regularisation(embeddings[m], frozen, own, frozen_logits, h.src_feature_loss,
                                                      h.src_feature_weight, h.src_logit_weight))
            regulariser = mean_of(terms)
            loss, parts["self"] = loss + regulariser, regulariser.item()
        if not h.shared_pool and h.relevance_weight > 0:
            relevance = self.relevance_loss(queries)
            loss, parts["relevance"] = loss + h.relevance_weight * relevance, relevance.item()
        return loss, parts

    @torch.no_grad()
    def end_task(self, task):
        h = self.hparams
        for pool_name in self.current_pools(task):
            current = self.pools[pool_name]
            if self.aggregate is not None:  # PromptSRC: the Gaussian-weighted average of the epochs' pools
                total = float(gaussian_epoch_weights(self.context.config.train.epochs, h.src_aggregate_mean,
                                                     h.src_aggregate_std)[: self.steps // max(
                    task.train.num_batches(self.context.config.train.batch_size), 1)].sum())
                for name, parameter in current.named_parameters():
                    parameter.copy_(self.aggregate[pool_name][name] / total)
            if pool_name in self.revisited and h.prompt_momentum > 0 and pool_name in self.teachers:
                old = self.teachers[pool_name].module.prompts.to(current.prompts.device)
                current.prompts.copy_(h.prompt_momentum * old + (1 - h.prompt_momentum) * current.prompts)
            current.requires_grad_(False)
        self.aggregate = None
        self.teachers = {}
        was_training = self.training
        self.eval()
        device = self.seen_mask.device
        single = len(task.modalities) == 1  # R_t's pseudo-queries: classes of single-modality tasks only
        queries, query_labels, embeddings, labels = [], [], [], []
        for batch in task.train.batches(256):
            batch = batch.to(device)
            embedded, query, _ = self.embed_batch(batch)
            if single:
                query = next(iter(query.values()))
                frames = query.shape[0] // len(batch)
                queries.append(query), query_labels.append(batch.labels.repeat_interleave(frames))
            embeddings.append(F.normalize(self.combine(embedded).float(), dim=-1)), labels.append(batch.labels)
        if single:
            self.queries.add(torch.cat(queries), torch.cat(query_labels))
        embeddings, labels = torch.cat(embeddings), torch.cat(labels)
        old = [c for c in self.features.classes() if c not in task.classes]
        self.features.add(embeddings, labels)
        if h.realign and old:
            with torch.enable_grad():
                self.realign(embeddings, labels, old)
        self.train(was_training)

    def realign(self, embeddings: torch.Tensor, labels: torch.Tensor, old_classes: list[int]) -> None:
        """Fine-tune the alignment layer on old-class pseudo-features and current real features.

        ``embeddings [N, D]`` (normalised, before the alignment layer) and ``labels [N]`` are the
        current task's; cross-entropy is over every seen class, each class weighted by the inverse
        of its number of samples (:func:`class_balanced_weights`): a current class has its few real
        samples, an old class ``realign_samples_per_class`` pseudo-features, and unweighted the
        step would pull the current task's features toward the old classes.
        """
        h = self.hparams
        device = embeddings.device
        pseudo_labels = torch.tensor(old_classes).repeat_interleave(h.realign_samples_per_class)
        pseudo = self.features.sample(pseudo_labels, self.generator).to(device)
        inputs = torch.cat([embeddings, pseudo])
        targets = torch.cat([labels, pseudo_labels.to(device)])
        space = torch.tensor(sorted(set(old_classes) | set(labels.tolist())), device=device)
        targets = targets_in(space, targets)
        weights = class_balanced_weights(targets, len(space))
        layer = self.align if h.realign_layer == "linear" else self.head
        layer.requires_grad_(True)
        optimizer = torch.optim.Adam(layer.parameters(), lr=h.realign_lr)
        for _ in range(h.realign_epochs):
            order = torch.randperm(len(inputs), generator=self.generator).to(device)
            for start in range(0, len(inputs), h.realign_batch_size):
                picks = order[start:start + h.realign_batch_size]
                loss = F.cross_entropy(self.head(self.align(inputs[picks]), space), targets[picks], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.head.mask_gradient()  # the head rules hold here too (realign_layer: head)
                optimizer.step()
                self.head.restore_frozen_rows()
        layer.requires_grad_(False)
        if h.realign_layer == "head":
            self.head.weight.requires_grad_(h.head.train)

    def representation(self, batch, modality_known=True):
        """The prompted embeddings before the re-alignment layer (which, with the head, is the classifier)."""
        embeddings, _, _ = self.embed_batch(batch, known=modality_known)
        return self.combine(embeddings)

    def optimizer_parameter_groups(self):
        lr = self.context.config.train.lr
        return prompt_parameter_groups(self, lr * self.hparams.prompt_lr_scale,
                                       {"relevance": lr * self.hparams.relevance_lr_scale})

    # ------------------------------------------------------------------------------ checkpoints
    def get_extra_state(self):
        return {"queries": self.queries.state(), "features": self.features.state()}

    def set_extra_state(self, state):
        self.queries.load(state["queries"])
        self.features.load(state["features"])
