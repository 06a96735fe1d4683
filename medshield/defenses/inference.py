"""Inference-time defenses as model wrappers (thesis ch. 6), applied to every query.

- ``rnd`` — Random Noise Defense (Qin et al., NeurIPS 2021): ``C(x + nu * delta)``, delta ~ N(0, I).
- ``dnd`` — Double Noise Defense (the thesis): ``y' = C(x + m * alpha) + n * beta`` with
  alpha, beta ~ N(0, I): noise on the query and on the output scores (two-column logits, so
  single- and two-logit models are treated alike).

Wrappers own a ``torch.Generator``: the same seed gives the same answers to the same query stream.
They are thread-safe (one lock around noise draw and forward), so a server may share them.

>>> defended = INFERENCE_DEFENSES.create("dnd", model=model, m=0.02, n=0.5, seed=0)
>>> labels = predict_labels(defended(images))
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from medshield.models.bounded import class_logits
from medshield.registry import Registry

INFERENCE_DEFENSES: Registry[nn.Module] = Registry("inference defense")


class NoisyDefense(nn.Module):
    """Base for wrappers that draw Gaussian noise from their own seeded generator."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        self.num_classes = getattr(model, "num_classes", None)
        self.config = getattr(model, "config", None)

    def reset(self, seed: int | None = None) -> None:
        """Restart the noise stream (for reproducible evaluations)."""
        self.seed = self.seed if seed is None else seed
        self.generator.manual_seed(self.seed)

    def noise(self, like: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 0:
            return torch.zeros_like(like)
        return torch.randn(like.shape, generator=self.generator).to(like.device, like.dtype) * scale

    @property
    def randomized(self) -> bool:
        return True


@INFERENCE_DEFENSES.register("rnd")
class RND(NoisyDefense):
    """Random Noise Defense: Gaussian noise of std ``nu`` on every query (pixels, [0, 1] scale)."""

    def __init__(self, model: nn.Module, nu: float = 0.02, seed: int = 0) -> None:
        if nu < 0:
            raise ValueError(f"nu must be >= 0, got {nu}")
        super().__init__(model, seed)
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            noisy = x + self.noise(x, self.nu)
            return self.model(noisy)

    def extra_repr(self) -> str:
        return f"nu={self.nu}, seed={self.seed}"


@INFERENCE_DEFENSES.register("dnd")
class DND(NoisyDefense):
    """Double Noise Defense: query noise ``m * alpha`` and score noise ``n * beta``."""

    def __init__(self, model: nn.Module, m: float = 0.02, n: float = 0.5, seed: int = 0) -> None:
        if m < 0 or n < 0:
            raise ValueError(f"m and n must be >= 0, got m={m}, n={n}")
        super().__init__(model, seed)
        self.m, self.n = m, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            scores = class_logits(self.model(x + self.noise(x, self.m)))
            return scores + self.noise(scores, self.n)

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, seed={self.seed}"


def defend(model: nn.Module, name: str | None, **params: float) -> nn.Module:
    """Wrap ``model`` with the named inference defense (``none``/``None`` returns it unchanged)."""
    if name is None or name.lower() == "none":
        return model
    return INFERENCE_DEFENSES.create(name, model=model, **params)
