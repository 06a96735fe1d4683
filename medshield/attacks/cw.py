"""C&W-L2 (Carlini & Wagner 2017, *Towards evaluating the robustness of neural networks*)."""

from __future__ import annotations

import torch
from torch import nn

from medshield.attacks.base import MinimizationAttack, model_bounds
from medshield.models import class_logits
from medshield.types import Norm


def cw_margin(logits: torch.Tensor, goal: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """Per-sample hinge ``max(Z_y - max_{j!=y} Z_j, -kappa)`` (untargeted) or ``max(max_{j!=t} Z_j - Z_t, -kappa)``."""
    z = class_logits(logits)
    own = z.gather(1, goal[:, None]).squeeze(1)
    other = z.masked_fill(torch.nn.functional.one_hot(goal, z.shape[1]).bool(), float("-inf")).amax(1)
    gap = other - own if targeted else own - other
    return gap.clamp_min(-kappa)


class CarliniWagnerL2(MinimizationAttack):
    """C&W-L2: minimise ``||delta||_2^2 + c * margin`` in tanh space with Adam; a binary search over ``c``
    per sample keeps the smallest successful perturbation. ``confidence`` is kappa. Minimisation attack:
    ``eps=None`` returns the unbounded result; an ``eps`` clips it to the L2 ball (or to ``finalize``'s norm).
    Shapes: inputs ``[N, C, H, W]`` in the model bounds; ``queries`` = ``binary_search_steps * steps``.

    Example::

        cw = CarliniWagnerL2(steps=100, binary_search_steps=5)
        res = cw.attack(model, images, labels, eps=None)
        print(res.l2[res.success].mean())
    """

    name = "cw"
    norm = Norm.L2

    def __init__(self, *, steps: int = 100, binary_search_steps: int = 5, initial_const: float = 1.0,
                 confidence: float = 0.0, lr: float = 0.01, abort_early: bool = True) -> None:
        if steps < 1 or binary_search_steps < 1 or initial_const <= 0 or lr <= 0 or confidence < 0:
            raise ValueError("steps, binary_search_steps, initial_const and lr must be positive; confidence >= 0")
        self.steps, self.binary_search_steps, self.initial_const = steps, binary_search_steps, initial_const
        self.confidence, self.lr, self.abort_early = confidence, lr, abort_early

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model_bounds(model)
        to_model = lambda w: (torch.tanh(w) + 1) / 2 * (hi - lo) + lo  # noqa: E731
        w0 = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        n = x.shape[0]
        const = torch.full((n,), self.initial_const, device=x.device)
        lower, upper = torch.zeros_like(const), torch.full_like(const, float("inf"))
        best_l2 = torch.full_like(const, float("inf"))
        best = x.clone()
        for _ in range(self.binary_search_steps):
            found, adv_l2, adv = self._optimise(model, x, w0, goal, const, targeted, to_model)
            better = found & (adv_l2 < best_l2)
            best[better], best_l2[better] = adv[better], adv_l2[better]
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper.isinf(), const * 10, (lower + upper) / 2)
        queries = torch.full((n,), self.binary_search_steps * self.steps, dtype=torch.long, device=x.device)
        return best, queries

    def _optimise(self, model: nn.Module, x: torch.Tensor, w0: torch.Tensor, goal: torch.Tensor,
                  const: torch.Tensor, targeted: bool, to_model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Adam run at fixed ``const``; returns (found [N], smallest successful L2 [N], that image)."""
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_l2 = torch.full((x.shape[0],), float("inf"), device=x.device)
        best = x.clone()
        prev = float("inf")
        for step in range(self.steps):
            adv = to_model(w)
            logits = model(adv)
            l2sq = (adv - x).flatten(1).pow(2).sum(1)
            margin = cw_margin(logits, goal, targeted, self.confidence)
            loss = (l2sq + const * margin).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                pred = class_logits(logits).argmax(1)
                ok = (pred == goal) if targeted else (pred != goal)
                improve = ok & (l2sq.sqrt() < best_l2)
                best_l2 = torch.where(improve, l2sq.sqrt(), best_l2)
                best[improve] = adv.detach()[improve]
                found |= ok
            if self.abort_early and step % max(self.steps // 10, 1) == 0:
                if loss.item() > prev * 0.9999:
                    break
                prev = loss.item()
        return found, best_l2, best
