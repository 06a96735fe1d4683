"""Expectation over Transformation (Athalye, Carlini & Wagner, ICML 2018, *Obfuscated gradients give a
false sense of security*): against a randomised model, attack the average of its outputs over many
draws of its randomness instead of one noisy draw.

:class:`ExpectationModel` wraps a randomised model (RND, DND, any noisy preprocessing) so every
white-box attack becomes its EOT version unchanged: each forward pass averages ``samples`` draws (one
batched pass of ``samples x N`` rows where memory allows), so its gradient is the average of the
draws' gradients. Each call costs ``samples`` model queries per image.
"""

from __future__ import annotations

import torch
from torch import nn

from medshield.models import class_logits


class ExpectationModel(nn.Module):
    """Averages ``samples`` forward passes of ``model`` (two-column logits, so one-logit models work).

    Example::

        eot = ExpectationModel(RND(model, nu=0.02), samples=16)
        res = pgd(steps=10).attack(eot, images, labels, eps=2 / 255)
    """

    def __init__(self, model: nn.Module, samples: int = 16, max_rows: int = 4096) -> None:
        super().__init__()
        if samples < 1 or max_rows < 1:
            raise ValueError(f"samples and max_rows must be >= 1, got {samples}, {max_rows}")
        self.model, self.samples, self.max_rows = model, samples, max_rows
        self.bounds = getattr(model, "bounds", (0.0, 1.0))
        self.num_classes = getattr(model, "num_classes", None)
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        per_pass = max(1, min(self.samples, self.max_rows // max(n, 1)))
        total, left = None, self.samples
        while left:
            k = min(per_pass, left)
            out = class_logits(self.model(x.repeat(k, *([1] * (x.ndim - 1))))).reshape(k, n, -1).sum(0)
            total = out if total is None else total + out
            left -= k
        return total / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}"
