"""A residual bottleneck adapter after every vision block, plugged in through the encoder's
:class:`~mmcl.models.backbone.TowerHooks` (APER's parameter-efficient module).

Block ``i``'s output ``x`` becomes ``x + scale * up(relu(down(x)))``; ``up`` starts at zero, so an
untrained adapter leaves the tower's output exactly unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BlockAdapters(nn.Module):
    def __init__(self, blocks: int, width: int, bottleneck: int, scale: float):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(width, bottleneck) for _ in range(blocks))
        self.up = nn.ModuleList(nn.Linear(bottleneck, width) for _ in range(blocks))
        for up in self.up:
            nn.init.zeros_(up.weight), nn.init.zeros_(up.bias)
        self.scale = scale

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.up[index](torch.relu(self.down[index](x))).to(x.dtype)
