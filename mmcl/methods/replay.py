"""Experience replay with a class-balanced exemplar buffer (a literature-sized budget per class).

After each task, ``per_class`` training samples of each of its classes are drawn at random
(seeded by the run seed and the task) and kept; in a stream where a class recurs (domain-incremental)
each task's samples of the class are a group of their own, so every domain keeps exemplars. With a
total cap ``buffer_size`` every group keeps at most ``buffer_size // groups`` samples (the first ones
drawn; earlier groups shrink when new ones arrive). The default, 5 per class, is the exemplar budget
of the iCaRL baseline of UESTC-MMEA-CL. Every training step of later tasks adds a replay batch to
the current one. Samples of different modality sets (modality-incremental streams) are kept apart
and replayed group by group.
"""
from __future__ import annotations

import torch

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import ExemplarConfig, TextAnchoredMethod
from mmcl.models.exemplars import BufferHooks, ExemplarBuffer
from mmcl.seeding import derived_seed, seeded_generator


@register
class Replay(BufferHooks, TextAnchoredMethod):
    card = Card(name="replay", family="rehearsal",
                description="experience replay, class-balanced exemplars (5 per class by default)",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]},
                ablations={"one-per-class": {"per_class": 1}, "twenty-per-class": {"per_class": 20}})

    Config = ExemplarConfig

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.buffer = ExemplarBuffer(hparams.per_class, hparams.buffer_size)
        self.generator = torch.Generator()

    def begin_task(self, task):
        super().begin_task(task)
        # Seeded per task, so a resumed run draws the same replay batches as an uninterrupted one.
        self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))

    def training_loss(self, batch, task):
        loss = self.classification_loss(batch, task)
        total, count = loss * len(batch), len(batch)
        size = self.hparams.replay_batch_size or self.context.config.train.batch_size
        for replayed in self.buffer.sample(size, self.generator):
            replay_loss = self.classification_loss(replayed.to(batch.labels.device), task)
            total, count = total + replay_loss * len(replayed), count + len(replayed)
        return total / count, {"ce": loss.item()}

    def end_task(self, task):
        # Its own generator, so that the exemplars depend on the seed and the task only.
        generator = seeded_generator(self.context.config.seed, "exemplars", task.index)
        self.buffer.add_task(task.train, task.index, generator)
