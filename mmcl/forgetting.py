"""The nearest-class-mean (NCM) probe of the forgetting decomposition: a diagnostic, never a method.

At the end of every task the engine (:func:`mmcl.engine.forgetting_decomposition`) fits an NCM
classifier on the method's *current* representation (:meth:`mmcl.methods.base.Method.representation`,
the features its classifier reads) from the training data of every task seen so far, and scores
the seen tasks' evaluation data with it. Old-class accuracy of the method's own classifier against
that of the NCM probe on the same features tells two kinds of forgetting apart
(:func:`mmcl.metrics.forgetting_decomposition`):

- the NCM accuracy on an old task falling from when it was learned to the end: the representation
  itself forgot (its classes no longer separate);
- the NCM reading old classes well where the own classifier does not: the classifier forgot
  (biased or drifted head) while the representation still holds the classes.

The probe: each feature L2-normalised, the class mean of the normalised features (sums in float64),
normalised again; a sample goes to the class of the largest cosine similarity (ties: the smallest
class id). Deterministic; it draws no random number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassMeans:
    """Running sums of L2-normalised features per class; :meth:`means` gives the normalised class means."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # [C, D] float64, C = largest label seen + 1
        self.counts: torch.Tensor | None = None  # [C] float64

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = F.normalize(features.detach().float(), dim=-1).double().cpu()
        labels = labels.detach().long().cpu()
        size = int(labels.max()) + 1 if len(labels) else 0
        if self.sums is None:
            self.sums = torch.zeros(size, features.shape[1], dtype=torch.float64)
            self.counts = torch.zeros(size, dtype=torch.float64)
        elif size > len(self.sums):
            self.sums = torch.cat([self.sums, self.sums.new_zeros(size - len(self.sums), self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(size - len(self.counts))])
        self.sums.index_add_(0, labels, features)
        self.counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))

    def means(self, classes: list[int]) -> torch.Tensor:
        """The normalised class means ``[len(classes), D]`` (float32) of ``classes``, each with samples."""
        if self.sums is None:
            raise ValueError("no training features added")
        index = torch.tensor(classes, dtype=torch.long)
        if int(index.max()) >= len(self.counts) or bool((self.counts[index] == 0).any()):
            missing = [c for c in classes if c >= len(self.counts) or self.counts[c] == 0]
            raise ValueError(f"classes {missing} have no training features")
        return F.normalize(self.sums[index] / self.counts[index].unsqueeze(1), dim=-1).float()


def ncm_predict(features: torch.Tensor, means: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The class id (of ``classes``, in the order of ``means``' rows) of the nearest normalised mean
    by cosine similarity, for each row of ``features`` ``[B, D]``."""
    similarity = F.normalize(features.detach().float().cpu(), dim=-1) @ means.T
    return torch.tensor(classes, dtype=torch.long)[similarity.argmax(dim=-1)]


def ncm_correct(features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, classes: list[int]) -> int:
    """How many rows of ``features`` the NCM classifier assigns to their ``labels``."""
    return int((ncm_predict(features, means, classes) == labels.detach().long().cpu()).sum())


def first_per_class(labels: torch.Tensor, per_class: int | None) -> torch.Tensor:
    """Indices (ascending) of the first ``per_class`` samples of each class in ``labels``; all when None."""
    if per_class is None:
        return torch.arange(len(labels))
    labels = labels.detach().long().cpu()
    order = torch.argsort(labels, stable=True)  # by class, dataset order within a class
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels)) - starts  # position of each sample within its class
    return torch.sort(order[rank < per_class]).values
