"""Class statistics of feature vectors, shared by the prototype methods (SimpleCIL, APER, RanPAC) and
iCaRL's nearest-mean-of-exemplars classifier.

:class:`PrototypeBank` accumulates per-class sums and counts, so a class that recurs (a new domain,
a new modality) updates its mean with every sample seen; a class never seen keeps a default row
(the class text embedding: the zero-shot classifier). :func:`ridge_solution` and
:func:`choose_ridge` are RanPAC's second-order classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PrototypeBank(nn.Module):
    """Per-class feature means ``[C, D]``; rows of classes without samples are ``defaults``."""

    def __init__(self, defaults: torch.Tensor):
        super().__init__()
        self.register_buffer("defaults", defaults.detach().clone().float(), persistent=False)
        self.register_buffer("sums", torch.zeros_like(self.defaults))
        self.register_buffer("counts", torch.zeros(len(defaults)))

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums.index_add_(0, labels.to(self.sums.device), features.detach().float().to(self.sums.device))
        self.counts.index_add_(0, labels.to(self.counts.device), torch.ones(len(labels), device=self.counts.device))

    @torch.no_grad()
    def reset(self) -> None:
        self.sums.zero_(), self.counts.zero_()

    def prototypes(self) -> torch.Tensor:
        seen = self.counts > 0
        means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
        return torch.where(seen.unsqueeze(1), means, self.defaults)

    def logits(self, features: torch.Tensor, label_space: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale * cos(feature, prototype[c])`` for the classes of ``label_space``."""
        rows = F.normalize(self.prototypes()[label_space], dim=-1)
        return scale * F.normalize(features.float(), dim=-1) @ rows.T


def ridge_solution(gram: torch.Tensor, class_sums: torch.Tensor, ridge: float) -> torch.Tensor:
    """``W = (G + ridge I)^-1 C`` (``G = H^T H`` ``[M, M]``, ``C = H^T Y`` ``[M, classes]``), in float64."""
    eye = torch.eye(len(gram), dtype=torch.float64, device=gram.device)
    return torch.linalg.solve(gram.double() + ridge * eye, class_sums.double())


def choose_ridge(features: torch.Tensor, targets: torch.Tensor, candidates: list[float],
                 generator: torch.Generator, fit_share: float = 0.8) -> tuple[float, list[float]]:
    """RanPAC's choice of the ridge: fit on a random ``fit_share`` of one task's (projected) training
    features, score each candidate by the mean squared error of its one-hot predictions on the
    rest; the candidate with the least error (the first on a tie) and every candidate's error.

    One eigendecomposition serves every candidate: of the fit part's Gram matrix ``H^T H``
    ``[M, M]``, or, when the fit part has fewer samples ``n`` than features ``M`` (a task of a few
    hundred samples against RanPAC's 2048 projected features), of its kernel ``H H^T`` ``[n, n]``:
    ``(H^T H + r I)^-1 H^T Y = H^T (H H^T + r I)^-1 Y`` (the same weights, up to float rounding,
    at a fraction of the cost: an ``n x n`` instead of an ``M x M`` eigendecomposition).
    """
    order = torch.randperm(len(features), generator=generator).to(features.device)
    cut = max(1, min(len(features) - 1, int(fit_share * len(features))))
    fit, held = order[:cut], order[cut:]
    h, y = features[fit].double(), targets[fit].double()
    h_held, y_held = features[held].double(), targets[held].double()
    kernel = len(h) < h.shape[1]
    if kernel:  # predictions h_held H^T U diag(1 / (s + r)) U^T Y, with H H^T = U diag(s) U^T
        values, vectors = torch.linalg.eigh(h @ h.T)
        left, projected = h_held @ h.T @ vectors, vectors.T @ y
    else:  # weights V diag(1 / (s + r)) V^T H^T Y, with H^T H = V diag(s) V^T
        values, vectors = torch.linalg.eigh(h.T @ h)
        projected = vectors.T @ (h.T @ y)
    errors = []
    for ridge in candidates:
        scaled = projected / (values.clamp(min=0) + ridge).unsqueeze(1)
        predictions = left @ scaled if kernel else h_held @ (vectors @ scaled)
        errors.append(float(((predictions - y_held) ** 2).mean()))
    best = min(range(len(candidates)), key=lambda i: (errors[i], i))
    return candidates[best], errors
