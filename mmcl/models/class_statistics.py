"""Per-class Gaussian statistics of features, and sampling from them (SLCA's classifier alignment,
COMM's pseudo-queries and re-alignment).

:class:`ClassStatistics` keeps, per class, a mean ``mu_c`` and a shrunk covariance
``Sigma_c = (1 - gamma) S_c + gamma * (trace(S_c) / D) * I`` (``gamma = shrinkage``, ``S_c`` the
sample covariance; Ledoit-Wolf-style target, *design choice*: with fewer samples than dimensions
``S_c`` is singular and could not be sampled from), and draws features from ``N(mu_c, Sigma_c)``
through the Cholesky factor of ``Sigma_c + jitter * (trace(Sigma_c) / D) * I``.

Two behaviours, set at construction (see :class:`ClassStatistics`): ``accumulate`` (a class seen
again gets the statistics of all its features, SLCA; or those of the latest features only, COMM)
and ``jitter`` (SLCA: ``1e-8``; COMM: ``1e-6``). Each keeps the exact arithmetic, storage and
random draws it had as its own type, so every run's numbers are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class ClassStatistics(nn.Module):
    """Per-class Gaussians of ``D``-dimensional features for classes ``0 .. num_classes - 1``, with
    shrinkage, and a sampler.

    Args:
        num_classes, dim: the classes and the feature width (the buffers of ``accumulate=True``).
        shrinkage: ``gamma`` of the covariance shrinkage toward ``trace / D * I``.
        accumulate: what :meth:`add` does with a class it has seen before.

            - ``True`` (SLCA): accumulates running moments, per class the count, the sum and the sum
              of outer products (float64 buffers ``counts``, ``sums``, ``outers``: the owner's state
              dict), so a recurring class (a domain-incremental stream) has the statistics of all
              its features exactly: ``mean = sum / n``, ``S = (outer - n mean mean^T) / (n - 1)``.
              :meth:`sample` draws float64 noise class by class (in ascending class order) and
              factors each class's covariance, in float64, at every call.
            - ``False`` (COMM): replaces the class's statistics with those of the features of this
              call: mean and centred sample covariance in float64, kept in float32 (dicts
              ``means``, ``covariances``; not buffers: the owner checkpoints them in its extra
              state through :meth:`state` / :meth:`load`, and ``Module.to`` leaves them where
              :meth:`add` or :meth:`load` put them). :meth:`sample` draws float32 noise
              ``[len(labels), D]`` in the order of ``labels``, through float32 Cholesky factors
              cached per class until the class is added again.
        jitter: the Cholesky factor is that of ``Sigma + jitter * v * I``, ``v`` the mean of
            ``Sigma``'s diagonal (at least ``1e-12``): the covariance made safely positive definite.
    """

    def __init__(self, num_classes: int, dim: int, shrinkage: float = 0.1, *, accumulate: bool = True,
                 jitter: float = 1e-8):
        super().__init__()
        self.shrinkage, self.accumulate, self.jitter = shrinkage, accumulate, jitter
        if accumulate:
            self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))
            self.register_buffer("sums", torch.zeros(num_classes, dim, dtype=torch.float64))
            self.register_buffer("outers", torch.zeros(num_classes, dim, dim, dtype=torch.float64))
        else:
            self.means: dict[int, torch.Tensor] = {}
            self.covariances: dict[int, torch.Tensor] = {}
            self._factors: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ statistics
    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Take in ``features [N, D]`` of the classes ``labels [N]`` (accumulated or replacing, as
        ``accumulate`` says)."""
        features = features.detach().double()
        for label in labels.unique().tolist():
            rows = features[labels == label]
            if self.accumulate:
                self.counts[label] += len(rows)
                self.sums[label] += rows.sum(dim=0)
                self.outers[label] += rows.T @ rows
                continue
            mean = rows.mean(dim=0)
            centred = rows - mean
            sample = centred.T @ centred / max(len(rows) - 1, 1)
            target = sample.diagonal().mean() * torch.eye(len(mean), dtype=sample.dtype, device=sample.device)
            covariance = (1 - self.shrinkage) * sample + self.shrinkage * target
            self.means[label], self.covariances[label] = mean.float(), covariance.float()
            self._factors.pop(label, None)

    def classes(self) -> list[int]:
        """The classes with statistics, ascending."""
        return torch.nonzero(self.counts > 0).flatten().tolist() if self.accumulate else sorted(self.means)

    def __len__(self) -> int:
        return len(self.classes())

    def mean(self, label: int) -> torch.Tensor:
        """``mu_c`` ``[D]`` (float64 when accumulating, float32 otherwise)."""
        return self.sums[label] / self.counts[label] if self.accumulate else self.means[label]

    def covariance(self, label: int) -> torch.Tensor:
        """The shrunk ``Sigma_c`` ``[D, D]`` (float64 when accumulating, float32 otherwise)."""
        if not self.accumulate:
            return self.covariances[label]
        n, mean = self.counts[label], self.mean(label)
        sample = (self.outers[label] - n * torch.outer(mean, mean)) / max(float(n) - 1.0, 1.0)
        target = torch.eye(len(mean), dtype=sample.dtype, device=sample.device) * sample.trace() / len(mean)
        return (1.0 - self.shrinkage) * sample + self.shrinkage * target

    # ------------------------------------------------------------------------------ sampling
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One feature per entry of ``labels`` drawn from its class's Gaussian: float32 ``[len(labels), D]``."""
        return self._sample_by_class(labels, generator) if self.accumulate else \
            self._sample_by_entry(labels, generator)

    def _sample_by_class(self, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        out = torch.empty(len(labels), self.sums.shape[1], dtype=torch.float64, device=self.sums.device)
        for label in labels.unique().tolist():
            if self.counts[label] <= 0:
                raise ValueError(f"no statistics for class {label}")
            where = labels == label
            covariance = self.covariance(label)
            # the mean variance as trace / D in Python floats (bitwise what this sampler always used)
            jitter = self.jitter * max(float(covariance.trace()) / len(covariance), 1e-12)
            factor = torch.linalg.cholesky(covariance + jitter * torch.eye(len(covariance), dtype=covariance.dtype,
                                                                           device=covariance.device))
            noise = torch.randn(int(where.sum()), len(covariance), generator=generator, dtype=torch.float64,
                                device="cpu").to(covariance.device)
            out[where] = self.mean(label) + noise @ factor.T
        return out.float()

    def _sample_by_entry(self, labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        means = torch.stack([self.means[int(c)] for c in labels])
        factors = torch.stack([self._factor(int(c)) for c in labels])
        noise = torch.randn(means.shape, generator=generator).to(means.device)
        return means + (factors @ noise.unsqueeze(-1)).squeeze(-1)

    def _factor(self, label: int) -> torch.Tensor:
        """The cached float32 Cholesky factor of a replaced class's jittered covariance."""
        if label not in self._factors:
            covariance = self.covariances[label].double()
            # the mean variance as the diagonal's tensor mean (bitwise what this sampler always used)
            jitter = self.jitter * covariance.diagonal().mean().clamp(min=1e-12)
            eye = torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
            self._factors[label] = torch.linalg.cholesky(covariance + jitter * eye).float()
        return self._factors[label]

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """``accumulate=False``: the statistics, for the owner's extra state (buffers otherwise)."""
        if self.accumulate:
            raise ValueError("accumulated statistics are buffers: they are checkpointed in the state dict")
        return {"shrinkage": self.shrinkage, "means": self.means, "covariances": self.covariances}

    def load(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""
        if self.accumulate:
            raise ValueError("accumulated statistics are buffers: they are restored from the state dict")
        self.shrinkage, self.means, self.covariances = state["shrinkage"], state["means"], state["covariances"]
        self._factors = {}
