"""The one per-class Gaussian type computes, in each configuration, bit for bit what the two former
types computed: SLCA's ``ClassStatistics`` (``accumulate=True, jitter=1e-8``) and COMM's
``GaussianBank`` (``accumulate=False, jitter=1e-6``), kept below verbatim as references."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from mmcl.models.class_statistics import ClassStatistics


# ------------------------------------------------------------------ the former types, verbatim
class OldClassStatistics(nn.Module):
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


class OldGaussianBank:
    def __init__(self, shrinkage: float = 0.1):
        self.shrinkage = shrinkage
        self.means: dict[int, torch.Tensor] = {}
        self.covariances: dict[int, torch.Tensor] = {}
        self._factors: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.means)

    @property
    def classes(self) -> list[int]:
        return sorted(self.means)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = features.detach().double()
        for label in labels.unique().tolist():
            rows = features[labels == label]
            mean = rows.mean(dim=0)
            centred = rows - mean
            sample = centred.T @ centred / max(len(rows) - 1, 1)
            target = sample.diagonal().mean() * torch.eye(len(mean), dtype=sample.dtype, device=sample.device)
            covariance = (1 - self.shrinkage) * sample + self.shrinkage * target
            self.means[label], self.covariances[label] = mean.float(), covariance.float()
            self._factors.pop(label, None)

    def _factor(self, label: int) -> torch.Tensor:
        if label not in self._factors:
            covariance = self.covariances[label].double()
            jitter = 1e-6 * covariance.diagonal().mean().clamp(min=1e-12)
            eye = torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
            self._factors[label] = torch.linalg.cholesky(covariance + jitter * eye).float()
        return self._factors[label]

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        means = torch.stack([self.means[int(c)] for c in labels])
        factors = torch.stack([self._factor(int(c)) for c in labels])
        noise = torch.randn(means.shape, generator=generator).to(means.device)
        return means + (factors @ noise.unsqueeze(-1)).squeeze(-1)

    def state(self) -> dict:
        return {"shrinkage": self.shrinkage, "means": self.means, "covariances": self.covariances}


# ------------------------------------------------------------------ data
def batches(dim: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Feature batches with recurring classes, a class of one sample and fewer samples than dimensions."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for labels in ([0] * 7 + [2] * 40 + [5] * 1, [2] * 9 + [3] * 64 + [0] * 3, [5] * 12 + [1] * 50):
        labels = torch.tensor(labels)[torch.randperm(len(labels), generator=generator)]
        scale = torch.rand(dim, generator=generator) * 3
        features = torch.randn(len(labels), dim, generator=generator) * scale + labels[:, None].float()
        out.append((features, labels))
    return out


def draws(classes: list[int]) -> torch.Tensor:
    """Labels to sample, unsorted and repeated (order matters to the per-entry sampler)."""
    return torch.tensor(classes * 5)[torch.randperm(5 * len(classes), generator=torch.Generator().manual_seed(9))]


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("dim, shrinkage", [(4, 0.1), (16, 0.0), (24, 0.5)])
def test_accumulating_statistics_match_slcas_former_type_bit_for_bit(dim, shrinkage):
    new, old = ClassStatistics(6, dim, shrinkage), OldClassStatistics(6, dim, shrinkage)
    assert new.accumulate and new.jitter == 1e-8  # the defaults are SLCA's
    for features, labels in batches(dim, seed=dim):
        new.add(features, labels)
        old.add(features, labels)
        assert new.classes() == old.classes() and len(new) == len(old.classes())
        for c in old.classes():
            assert identical(new.mean(c), old.mean(c)) and identical(new.covariance(c), old.covariance(c))
        labels = draws(old.classes())
        assert identical(new.sample(labels, torch.Generator().manual_seed(3)),
                         old.sample(labels, torch.Generator().manual_seed(3)))
    # the same buffers under the same names: SLCA's checkpoints load either way
    assert list(new.state_dict()) == list(old.state_dict()) == ["counts", "sums", "outers"]
    assert all(identical(new.state_dict()[k], v) for k, v in old.state_dict().items())
    reloaded = ClassStatistics(6, dim, shrinkage)
    reloaded.load_state_dict(old.state_dict())
    labels = draws(old.classes())
    assert identical(reloaded.sample(labels, torch.Generator().manual_seed(4)),
                     old.sample(labels, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="class 4"):
        new.sample(torch.tensor([4]))


@pytest.mark.parametrize("dim, shrinkage", [(4, 0.1), (16, 0.0), (24, 0.5)])
def test_replacing_statistics_match_comms_former_type_bit_for_bit(dim, shrinkage):
    new = ClassStatistics(6, dim, shrinkage, accumulate=False, jitter=1e-6)
    old = OldGaussianBank(shrinkage)
    generator_new, generator_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for features, labels in batches(dim, seed=dim + 1):
        new.add(features, labels)
        old.add(features, labels)
        assert new.classes() == old.classes and len(new) == len(old)
        for c in old.classes:
            assert identical(new.mean(c), old.means[c]) and identical(new.covariance(c), old.covariances[c])
        labels = draws(old.classes)
        # one generator across calls, as COMM draws (the cached factors are used again)
        for _ in range(2):
            assert identical(new.sample(labels, generator_new), old.sample(labels, generator_old))
    assert list(new.state_dict()) == []  # nothing in the owner's state dict: its extra state holds it
    state = new.state()
    assert list(state) == ["shrinkage", "means", "covariances"] and state["shrinkage"] == shrinkage
    assert sorted(state["means"]) == sorted(old.means)
    assert all(identical(state["means"][c], old.means[c]) for c in old.means)
    assert all(identical(state["covariances"][c], old.covariances[c]) for c in old.covariances)
    # COMM's extra state round trip (through torch.save as a checkpoint), from the former type's state
    buffer = io.BytesIO()
    torch.save(old.state(), buffer)
    buffer.seek(0)
    reloaded = ClassStatistics(6, dim, accumulate=False, jitter=1e-6)
    reloaded.load(torch.load(buffer))
    labels = draws(old.classes)
    assert identical(reloaded.sample(labels, torch.Generator().manual_seed(6)),
                     old.sample(labels, torch.Generator().manual_seed(6)))


def test_each_behaviour_keeps_its_own_checkpoint_form():
    accumulating = ClassStatistics(2, 3)
    with pytest.raises(ValueError, match="state dict"):
        accumulating.state()
    with pytest.raises(ValueError, match="state dict"):
        accumulating.load({})
