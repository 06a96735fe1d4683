"""Auto-PGD (Croce & Hein, ICML 2020, *Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks*): PGD with momentum and a step size that halves itself at
checkpoints when the loss stops rising, so it needs no step-size tuning. L-inf and L2.

APGD-CE uses the cross-entropy; APGD-T runs the targeted DLR loss towards each of the ``targets``
most likely wrong classes in turn (for two classes: the other class) on the images still standing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medshield.attacks.base import FixedEpsilonAttack, model_bounds
from medshield.attacks.geometry import project, random_start, step_direction
from medshield.attacks.losses import LOSSES, objective_and_gradient, top_targets
from medshield.models import class_logits
from medshield.types import Norm


def checkpoints(steps: int) -> list[int]:
    """Iterations where APGD checks its progress: ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06)``, times ``steps`` (rounded up)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(q * steps, 6)) for q in p[1:] if q <= 1}  # round: 0.57 * 100 is 57.000...01
    return sorted(m for m in marks if m >= 1)


class APGD(FixedEpsilonAttack):
    """APGD: ``steps`` iterations from a random start, step ``2 eps`` halved at :func:`checkpoints`
    when fewer than ``rho`` of the steps since the last one raised the loss, or when neither the step
    nor the best loss changed; momentum ``alpha = 0.75``. ``loss`` is ``ce``, ``margin`` or ``dlr``
    (see :mod:`.losses`; ``dlr`` is the margin for two classes). ``targets = k > 0`` makes it APGD-T:
    an untargeted call runs the targeted loss towards each of the top-``k`` wrong classes in turn.
    ``restarts`` re-runs from new random starts on the images not yet broken. Returns the first
    adversarial point found per image (else the highest-loss point). ``queries`` = gradient calls.

    Example::

        apgd = APGD(norm="linf", steps=100, loss="ce")
        res = apgd.attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
        print(res.success_rate)
    """

    name = "apgd"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 100, loss: str = "ce", restarts: int = 1,
                 targets: int = 0, rho: float = 0.75, momentum: float = 0.75) -> None:
        self.norm = Norm.parse(norm)
        if steps < 1 or restarts < 1 or targets < 0:
            raise ValueError(f"steps and restarts must be >= 1 and targets >= 0, got {steps}, {restarts}, {targets}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError("rho and momentum must be in (0, 1]")
        self.steps, self.loss, self.restarts, self.targets = steps, loss, restarts, targets
        self.rho, self.momentum = rho, momentum

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None
        best, done = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.targets and not targeted:
            with torch.no_grad():
                clean = model(x)
            n_wrong = class_logits(clean).shape[1] - 1
            plans = [top_targets(clean, goal, r) for r in range(min(self.targets, n_wrong))]
        else:
            plans = [None]
        loss = "dlr" if self.targets and self.loss == "ce" else self.loss
        for target in plans:
            for _ in range(self.restarts):
                todo = (~done).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best, queries
                adv, ok = self._descend(model, x[todo], goal[todo], None if target is None else target[todo],
                                        eps, targeted, loss, generator)
                best[todo], done[todo] = adv, ok
                queries[todo] += self.steps + 1
        return best, queries

    def _descend(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, target: torch.Tensor | None,
                 eps: float, targeted: bool, loss: str, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run; returns (first adversarial point else best-loss point, found [N])."""
        lo, hi = model_bounds(model)
        view = (-1,) + (1,) * (x.ndim - 1)
        to_ball = lambda p: (x + project(p - x, eps, self.norm)).clamp(lo, hi)  # noqa: E731

        def evaluate(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if target is None:
                value, grad, logits = objective_and_gradient(model, p, loss, goal, targeted)
            else:
                value, grad, logits = objective_and_gradient(model, p, loss, target, True, true=goal)
            pred = class_logits(logits).argmax(1)
            return value, grad, (pred == goal) if targeted else (pred != goal)

        adv = to_ball(x + random_start(x, eps, self.norm, generator))
        value, grad, success = evaluate(adv)
        found, first = success.clone(), torch.where(success.view(view), adv, x)
        best_value, best_x, best_grad = value.clone(), adv.clone(), grad.clone()
        step = torch.full((x.shape[0],), 2 * eps, device=x.device, dtype=x.dtype)
        prev, rises, last, reduced = adv.clone(), torch.zeros_like(value), 0, torch.zeros_like(found)
        value_at_check = best_value.clone()
        marks = set(checkpoints(self.steps))
        for k in range(1, self.steps + 1):
            z = to_ball(adv + step.view(view) * step_direction(grad, self.norm))
            a = 1.0 if k == 1 else self.momentum
            adv, prev = to_ball(adv + a * (z - adv) + (1 - a) * (adv - prev)), adv
            new_value, grad, success = evaluate(adv)
            newly = success & ~found
            first[newly], found = adv[newly], found | success
            rises += (new_value > value).to(rises.dtype)
            value = new_value
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_x[better], best_grad[better] = adv[better], grad[better]
            if k in marks:
                stalled = (rises < self.rho * (k - last)) | (~reduced & (best_value <= value_at_check))
                step = torch.where(stalled, step / 2, step)
                adv[stalled], grad[stalled] = best_x[stalled], best_grad[stalled]
                prev[stalled], value = best_x[stalled], torch.where(stalled, best_value, value)
                reduced, value_at_check, rises, last = stalled, best_value.clone(), torch.zeros_like(rises), k
        out = torch.where(found.view(view), first, best_x)
        return out.detach(), found


def apgd_ce(*, norm: Norm | str = Norm.LINF, steps: int = 100, restarts: int = 1) -> APGD:
    """APGD-CE (Croce & Hein 2020): APGD on the cross-entropy.

    Example::

        res = apgd_ce().attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    """
    return APGD(norm=norm, steps=steps, loss="ce", restarts=restarts)


def apgd_dlr(*, norm: Norm | str = Norm.LINF, steps: int = 100, restarts: int = 1) -> APGD:
    """APGD on the DLR loss (the logit margin for two classes; see :mod:`.losses`).

    Example::

        res = apgd_dlr().attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    """
    return APGD(norm=norm, steps=steps, loss="dlr", restarts=restarts)


def apgd_t(*, norm: Norm | str = Norm.LINF, steps: int = 100, targets: int = 9, restarts: int = 1) -> APGD:
    """APGD-T (Croce & Hein 2020): targeted DLR towards each of the top-``targets`` wrong classes.

    Example::

        res = apgd_t(targets=3).attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    """
    return APGD(norm=norm, steps=steps, loss="dlr", targets=targets, restarts=restarts)
