"""FMN, Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, *Fast minimum-norm
adversarial attacks through adaptive norm constraints*). L2 and L-inf.

Gradient steps on the logit margin inside an ``eps_k`` ball whose radius adapts every step: it
shrinks by ``(1 - gamma_k)`` (and never exceeds the smallest adversarial found) while the point is
adversarial, and grows by ``(1 + gamma_k)`` while it is not (before the first adversarial it jumps
to the linear estimate of the boundary, ``||delta|| + margin / ||grad||_dual``). Step size ``alpha``
and ``gamma`` decay with cosine annealing. Gives each image's minimal perturbation found.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medshield.attacks.base import MinimizationAttack, model_bounds
from medshield.attacks.geometry import norms, step_direction
from medshield.attacks.losses import objective_and_gradient
from medshield.models import class_logits
from medshield.types import Norm


def cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) to ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


class FMN(MinimizationAttack):
    """FMN: ``steps`` gradient calls per image; ``alpha_init`` is the L2 length of the first gradient
    step (decays to ``alpha_init * alpha_final``), ``gamma_init`` the first relative change of the
    radius (decays to ``gamma_final``). Minimisation attack: ``eps=None`` returns the smallest
    adversarial per image (``res.l2`` / ``res.linf`` are the minimal distances), an ``eps`` clips it.

    Example::

        fmn = FMN(norm="l2", steps=100)
        res = fmn.attack(model, images, labels, eps=None)
        print(res.l2[res.success].median())
    """

    name = "fmn"

    def __init__(self, *, norm: Norm | str = Norm.L2, steps: int = 100, alpha_init: float = 1.0,
                 alpha_final: float = 0.01, gamma_init: float = 0.05, gamma_final: float = 0.001) -> None:
        self.norm = Norm.parse(norm)
        if steps < 1 or alpha_init <= 0 or not 0 < alpha_final <= 1:
            raise ValueError("steps >= 1, alpha_init > 0 and alpha_final in (0, 1] are required")
        if not 0 < gamma_final <= gamma_init < 1:
            raise ValueError("0 < gamma_final <= gamma_init < 1 is required")
        self.steps, self.alpha_init, self.alpha_final = steps, alpha_init, alpha_final
        self.gamma_init, self.gamma_final = gamma_init, gamma_final

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model_bounds(model)
        n = x.shape[0]
        dual = Norm.L2 if self.norm is Norm.L2 else None  # L-inf's dual is L1
        delta = torch.zeros_like(x)
        radius = torch.zeros(n, device=x.device, dtype=x.dtype)
        best, best_norm = x.clone(), torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        for k in range(self.steps):
            # the margin to *minimise*: z_y - max_{j != y} z_j (untargeted), max_{j != t} z_j - z_t (targeted)
            gain, grad, logits = objective_and_gradient(model, x + delta, "margin", goal, targeted)
            margin, grad = -gain, -grad
            pred = class_logits(logits).argmax(1)
            adv = (pred == goal) if targeted else (pred != goal)
            size = norms(delta, self.norm)
            better = adv & (size < best_norm)
            best[better], best_norm = (x + delta)[better], torch.where(better, size, best_norm)
            gamma = cosine(self.gamma_init, self.gamma_final, k, self.steps)
            found = torch.isfinite(best_norm)
            grad_dual = norms(grad, Norm.L2) if dual else grad.flatten(1).abs().sum(1)
            estimate = size + margin.abs() / grad_dual.clamp_min(1e-12)
            grow = torch.where(found, radius * (1 + gamma), estimate)
            shrink = torch.minimum(radius * (1 - gamma), best_norm)
            radius = torch.where(adv, shrink, grow)
            alpha = cosine(self.alpha_init, self.alpha_init * self.alpha_final, k, self.steps)
            delta = delta - alpha * step_direction(grad, Norm.L2)
            delta = _project_radius(delta, radius, self.norm)
            delta = (x + delta).clamp(lo, hi) - x
        with torch.no_grad():
            pred = class_logits(model(x + delta)).argmax(1)
        adv = (pred == goal) if targeted else (pred != goal)
        size = norms(delta, self.norm)
        better = adv & (size < best_norm)
        best[better] = (x + delta)[better]
        queries = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        return best.detach(), queries


def _project_radius(delta: torch.Tensor, radius: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project each sample onto its own ball of radius ``radius[i]``."""
    view = (-1,) + (1,) * (delta.ndim - 1)
    if norm is Norm.LINF:
        r = radius.view(view)
        return torch.maximum(torch.minimum(delta, r), -r)
    size = norms(delta, Norm.L2)
    factor = torch.where(size > radius, radius / size.clamp_min(1e-12), torch.ones_like(size))
    return delta * factor.view(view)
