"""Per-class Gaussian statistics of features, and sampling from them (SLCA's classifier alignment).

:class:`ClassStatistics` keeps, per class, the count, the sum and the sum of outer products of
the features it was given, so statistics of a class seen again (a domain-incremental stream) are
those of all its features, exactly. ``mean = sum / n``;
``covariance = (outer - n mean mean^T) / (n - 1)``, shrunk toward ``trace / D * I`` by
``shrinkage`` (with fewer samples than dimensions the sample covariance is singular and could not
be sampled from).
"""
from __future__ import annotations

import torch
from torch import nn


class ClassStatistics(nn.Module):
    """Running first and second moments of ``D``-dimensional features for ``num_classes`` classes
    (buffers: checkpointed with the method)."""

    def __init__(self, num_classes: int, dim: int, shrinkage: float = 0.1):
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("outers", torch.zeros(num_classes, dim, dim, dtype=torch.float64))

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = features.detach().double()
        for label in labels.unique().tolist():
            rows = features[labels == label]
            self.counts[label] += len(rows)
            self.sums[label] += rows.sum(dim=0)
            self.outers[label] += rows.T @ rows

    def classes(self) -> list[int]:
        return torch.nonzero(self.counts > 0).flatten().tolist()

    def mean(self, label: int) -> torch.Tensor:
        return self.sums[label] / self.counts[label]

    def covariance(self, label: int) -> torch.Tensor:
        n, mean = self.counts[label], self.mean(label)
        sample = (self.outers[label] - n * torch.outer(mean, mean)) / max(float(n) - 1.0, 1.0)
        target = torch.eye(len(mean), dtype=sample.dtype, device=sample.device) * sample.trace() / len(mean)
        return (1.0 - self.shrinkage) * sample + self.shrinkage * target

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One feature per entry of ``labels`` drawn from its class's Gaussian: ``[len(labels), D]``."""
        out = torch.empty(len(labels), self.sums.shape[1], dtype=torch.float64, device=self.sums.device)
        for label in labels.unique().tolist():
            if self.counts[label] <= 0:
                raise ValueError(f"no statistics for class {label}")
            where = labels == label
            covariance = self.covariance(label)
            jitter = 1e-8 * max(float(covariance.trace()) / len(covariance), 1e-12)
            factor = torch.linalg.cholesky(covariance + jitter * torch.eye(len(covariance), dtype=covariance.dtype,
                                                                           device=covariance.device))
            noise = torch.randn(int(where.sum()), len(covariance), generator=generator, dtype=torch.float64,
                                device="cpu").to(covariance.device)
            out[where] = self.mean(label) + noise @ factor.T
        return out.float()
