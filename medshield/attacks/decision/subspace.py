"""Low-dimensional sampling subspaces for gradient estimation at the decision boundary (QEBA, Li et
al., CVPR 2020; CGBA, Reza et al., ICCV 2023): random directions drawn in a small space and mapped to
image space, either by bilinear upsampling (QEBA-S, "spatial") or as the low-frequency block of an
orthonormal 2-D DCT (QEBA-F, "frequency"). Both maps are linear, so the estimated gradient is the
projection of the true one onto the subspace."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch.nn import functional as F

SUBSPACES = ("dct", "resize", "full")


@lru_cache(maxsize=16)
def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D [n, n]`` (``D @ x`` transforms, ``D.T @ c`` inverts)."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def low_size(size: int, ratio: float | None) -> int:
    """Side of the reduced space for an image side ``size``: ``size / ratio``, or with ``ratio=None``
    a quarter of the side but at least 14 (28x28 MedMNIST images keep 14x14; 224 px keeps 56)."""
    if ratio is None:
        return min(size, max(14, size // 4))
    return max(2, min(size, int(round(size / ratio))))


def sample_directions(count: int, shape: tuple[int, ...], generator: torch.Generator, subspace: str = "dct",
                      ratio: float | None = None) -> torch.Tensor:
    """``count`` random unit-L2 directions of image ``shape`` ``(C, H, W)`` drawn from a Gaussian in the
    reduced space (side :func:`low_size`) and mapped to image space: ``dct`` keeps the lowest-frequency
    DCT coefficients, ``resize`` upsamples bilinearly, ``full`` samples every pixel (HSJA)."""
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace must be one of {SUBSPACES}, got {subspace!r}")
    c, h, w = shape
    if subspace == "full" or (ratio is not None and ratio <= 1):
        z = torch.randn((count, c, h, w), generator=generator)
    else:
        lh, lw = low_size(h, ratio), low_size(w, ratio)
        low = torch.randn((count, c, lh, lw), generator=generator)
        if subspace == "resize":
            z = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        else:  # inverse DCT of the zero-padded low-frequency block: D_h[:, :lh].T @ low @ D_w[:, :lw]
            z = dct_matrix(h)[:lh].T @ low @ dct_matrix(w)[:lw]
    return z / z.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def subspace_dim(shape: tuple[int, ...], subspace: str = "dct", ratio: float | None = None) -> int:
    """Dimension of the sampling space."""
    c, h, w = shape
    if subspace == "full" or (ratio is not None and ratio <= 1):
        return c * h * w
    return c * low_size(h, ratio) * low_size(w, ratio)
