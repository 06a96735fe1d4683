"""Batched random affine augmentation (rotation, translation, scaling) driven by a torch.Generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AffineAugment:
    """Per-image random rotation (±degrees), translation (± fraction of size) and scaling (1 ± scale),
    applied to a whole batch in one ``grid_sample``; the thesis's augmentation."""

    degrees: float = 10.0
    translate: float = 0.1
    scale: float = 0.1

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * bound

        angle = uniform(math.radians(self.degrees))
        factor = 1.0 + uniform(self.scale)
        tx, ty = uniform(2 * self.translate), uniform(2 * self.translate)  # grid units span 2
        cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
