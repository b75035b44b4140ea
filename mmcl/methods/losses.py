"""Loss pieces several methods share: label positions in a label space, logit distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def targets_in(label_space: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Positions of ``labels`` inside ``label_space`` (every label must be in the space)."""
    lookup = torch.full((int(label_space.max()) + 1,), -1, dtype=torch.long, device=label_space.device)
    lookup[label_space] = torch.arange(len(label_space), device=label_space.device)
    positions = lookup[labels.clamp(max=len(lookup) - 1)]
    if (positions < 0).any() or (labels >= len(lookup)).any():
        raise ValueError("a label is outside the label space")
    return positions


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logit distillation (LwF; the MoE adapters' L_kd): KL(teacher || student) on temperature-softened
    logits, scaled by T^2 (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1),
                    reduction="batchmean") * temperature**2
