"""SLCA (Zhang et al., ICCV 2023): slow learner with classifier alignment.

- **Slow learner**: the last ``trainable_blocks`` vision blocks fine-tune at a learning rate
  ``slow_ratio`` times the head's (paper: 1e-4 against 1e-2, a ratio of 0.01); the cosine head
  (initialised at the class text embeddings) trains at ``head_lr_scale`` x ``train.lr``. Training
  loss: cross-entropy over the current task's classes (``ce_over: seen`` for all seen classes).
- **Classifier alignment**: after each task, per-class Gaussian statistics (mean, covariance;
  :class:`~mmcl.models.class_statistics.ClassStatistics`) of the fused features of the task's
  training data are stored; then the head is re-trained for ``align_epochs`` on
  ``align_samples_per_class`` features drawn from the Gaussian of every class seen so far
  (cross-entropy over the seen classes, SGD with momentum 0.9 as the paper). The statistics of
  earlier classes are not recomputed after the backbone moves (as in the paper). A class seen
  again (domain-incremental) accumulates its statistics over all its tasks.

Works on any modality set: features are the shared mean fusion of the per-modality towers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.heads import CeOver
from mmcl.methods.losses import targets_in
from mmcl.methods.text_anchored import TextAnchoredMethod, iterate_task_batches
from mmcl.models.class_statistics import ClassStatistics
from mmcl.seeding import derived_seed


@register
class SLCA(TextAnchoredMethod):
    card = Card(name="slca", family="fine-tuning",
                description="SLCA: slow learner (backbone at 0.01x the head's rate) + classifier alignment on class Gaussians",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "slow_ratio": [0.01, 0.1]},
                ablations={"no-alignment": {"align": False}, "fast-learner": {"slow_ratio": 1.0}})

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        head_lr_scale: float = Field(10.0, gt=0)  # the head's rate = this x train.lr (as the prompt methods')
        slow_ratio: float = Field(0.01, gt=0)  # the trainable blocks' rate = this x the head's rate
        ce_over: CeOver = "current"  # classes in the training cross-entropy (the head's label space)
        align: bool = True  # classifier alignment after each task
        align_epochs: int = Field(5, ge=1)  # paper: 5
        align_samples_per_class: int = Field(64, ge=1)  # drawn per class per epoch (paper: 256)
        align_lr: float = Field(0.01, gt=0)  # SGD rate of the alignment (paper: 0.01)
        shrinkage: float = Field(0.1, ge=0, le=1)  # covariance shrinkage toward trace/D * I

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.statistics = ClassStatistics(context.num_classes, encoder.embed_dim, hparams.shrinkage)
        self.generator = torch.Generator()

    def training_loss(self, batch, task):
        return self.classification_loss(batch, task)

    def end_task(self, task):
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for batch in iterate_task_batches(task.train, self.context.config.train.eval_batch_size,
                                              self.context.device):
                self.statistics.add(self.features(batch), batch.labels)
        self.train(was_training)
        if self.hparams.align and self.hparams.head.train:
            self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))
            self.align_classifier()

    def align_classifier(self) -> list[float]:
        """Re-train the head on features sampled from every seen class's Gaussian; the epochs' mean losses."""
        classes = torch.tensor(self.statistics.classes(), dtype=torch.long)
        space = classes.to(self.head.weight.device)
        per_class = self.hparams.align_samples_per_class
        optimizer = torch.optim.SGD([self.head.weight], lr=self.hparams.align_lr, momentum=0.9)
        batch_size, losses = self.context.config.train.batch_size, []
        for _ in range(self.hparams.align_epochs):
            labels = classes.repeat_interleave(per_class)
            labels = labels[torch.randperm(len(labels), generator=self.generator)]
            features = self.statistics.sample(labels, self.generator).to(space.device)
            labels = labels.to(space.device)
            total = 0.0
            for start in range(0, len(labels), batch_size):
                chunk = slice(start, start + batch_size)
                loss = F.cross_entropy(self.head(features[chunk], space), targets_in(space, labels[chunk]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.head.mask_gradient()
                optimizer.step()
                self.head.restore_frozen_rows()
                total += loss.item() * len(labels[chunk])
            losses.append(total / len(labels))
        return losses

    def optimizer_parameter_groups(self):
        head_lr = self.context.config.train.lr * self.hparams.head_lr_scale
        head = [self.head.weight] if self.head.weight.requires_grad else []
        rest = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("head.")]
        return [{"params": head, "lr": head_lr}, {"params": rest, "lr": head_lr * self.hparams.slow_ratio}]
