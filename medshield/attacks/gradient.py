"""Gradient attacks as configurations of one loop: FGSM, BIM, PGD and MI-FGSM (plus the thesis's
iterative FGSM). The geometry (step, projection, random start) comes from :mod:`.geometry`.

- FGSM: Goodfellow, Shlens & Szegedy 2015, *Explaining and harnessing adversarial examples*.
- BIM: Kurakin, Goodfellow & Bengio 2016, *Adversarial examples in the physical world*.
- PGD: Madry et al. 2018, *Towards deep learning models resistant to adversarial attacks*.
- MI-FGSM: Dong et al. 2018, *Boosting adversarial attacks with momentum*.
"""

from __future__ import annotations

import torch
from torch import nn

from medshield.attacks.base import FixedEpsilonAttack, input_gradient, is_adversarial, model_bounds
from medshield.attacks.geometry import l1_normalise, project, random_start, step_direction
from medshield.models import class_logits
from medshield.types import Norm


class GradientAttack(FixedEpsilonAttack):
    """Iterated steepest ascent on the cross-entropy inside the ``eps`` ball, in pixel space.

    ``steps`` iterations of size ``rel_stepsize * eps`` (or ``abs_stepsize``); ``random_start`` draws the
    first point uniformly from the ball; ``restarts`` repeats the run and keeps, per sample, the first
    successful one; ``momentum`` (MI-FGSM's mu) accumulates L1-normalised gradients before the step.
    Shapes: inputs ``[N, C, H, W]`` in [0, 1], labels ``[N]``. ``queries`` = gradient calls per sample.

    Example::

        pgd = GradientAttack(norm="linf", steps=10, rel_stepsize=0.25, random_start=True)
        res = pgd.attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
        print(res.success_rate, res.linf.max())
    """

    name = "gradient"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 10, rel_stepsize: float = 0.25,
                 abs_stepsize: float | None = None, random_start: bool = True, restarts: int = 1,
                 momentum: float | None = None) -> None:
        self.norm = Norm.parse(norm)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        if rel_stepsize <= 0 or (abs_stepsize is not None and abs_stepsize <= 0):
            raise ValueError("step sizes must be positive")
        if momentum is not None and momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.steps, self.rel_stepsize, self.abs_stepsize = steps, rel_stepsize, abs_stepsize
        self.random_start, self.restarts, self.momentum = random_start, restarts, momentum

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None  # guaranteed by Attack._check (needs_eps)
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for restart in range(self.restarts):
            todo = (~done).nonzero().squeeze(1) if restart else None
            xs, gs = (x, goal) if todo is None else (x[todo], goal[todo])
            adv, success = self._descend(model, xs, gs, eps, targeted, generator)
            if todo is None:
                best, done = adv, success
                queries += self.steps
            else:
                best[todo], done[todo] = adv, success
                queries[todo] += self.steps
            if bool(done.all()):
                break
        return best, queries

    def _descend(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float, targeted: bool,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One run of the loop; returns the final point and whether its last forward pass was adversarial."""
        lo, hi = model_bounds(model)
        step = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * eps
        adv = (x + random_start(x, eps, self.norm, generator)).clamp(lo, hi) if self.random_start else x
        velocity = torch.zeros_like(x) if self.momentum is not None else None
        for _ in range(self.steps):
            grad, _ = input_gradient(model, adv, goal, targeted)
            if velocity is not None:
                grad = velocity.mul_(self.momentum).add_(l1_normalise(grad))
            adv = x + project(adv + step * step_direction(grad, self.norm) - x, eps, self.norm)
            adv = adv.clamp(lo, hi)
        with torch.no_grad():
            success = is_adversarial(model(adv), goal, targeted) if self.restarts > 1 else torch.zeros_like(goal, dtype=torch.bool)
        return adv.detach(), success


def fgsm(*, norm: Norm | str = Norm.LINF) -> GradientAttack:
    """FGSM (Goodfellow et al. 2015): one step of size eps along sign(grad) (L-inf) or grad/||grad|| (L2).

    Example::

        res = fgsm().attack(model, images, labels, eps=2 / 255)
    """
    return GradientAttack(norm=norm, steps=1, rel_stepsize=1.0, random_start=False)


def bim(*, norm: Norm | str = Norm.LINF, steps: int = 10, rel_stepsize: float = 0.2) -> GradientAttack:
    """BIM / I-FGSM (Kurakin et al. 2016): FGSM iterated with small steps, no random start.

    Example::

        res = bim(steps=10).attack(model, images, labels, eps=2 / 255)
    """
    return GradientAttack(norm=norm, steps=steps, rel_stepsize=rel_stepsize, random_start=False)


def pgd(*, norm: Norm | str = Norm.LINF, steps: int = 10, rel_stepsize: float = 0.25, restarts: int = 1,
        random_start: bool = True) -> GradientAttack:
    """PGD (Madry et al. 2018): BIM from a uniform random start in the ball, optionally restarted.

    Example::

        res = pgd(steps=10, restarts=2).attack(model, images, labels, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    """
    return GradientAttack(norm=norm, steps=steps, rel_stepsize=rel_stepsize, random_start=random_start,
                          restarts=restarts)


def mifgsm(*, norm: Norm | str = Norm.LINF, steps: int = 10, momentum: float = 1.0,
           rel_stepsize: float | None = None) -> GradientAttack:
    """MI-FGSM (Dong et al. 2018): momentum ``mu`` over L1-normalised gradients, step eps/steps.

    Example::

        res = mifgsm(steps=10, momentum=1.0).attack(model, images, labels, eps=2 / 255)
    """
    return GradientAttack(norm=norm, steps=steps, rel_stepsize=rel_stepsize or 1.0 / steps, random_start=False,
                          momentum=momentum)


class IterativeFGSM(FixedEpsilonAttack):
    """The thesis's iterative FGSM (its Algorithm 1): one gradient, then the FGSM step grows
    ``eps/steps, 2 eps/steps, ..., eps`` until the label flips; each sample keeps its smallest flipping step.

    Costs one gradient call and ``steps`` forward passes per sample (``queries`` counts the gradient).

    Example::

        res = IterativeFGSM(steps=10).attack(model, images, labels, eps=8 / 255)
        print(res.linf)  # per-sample step that flipped the label (eps where none did)
    """

    name = "fgsm_iter"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 10) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.norm, self.steps = Norm.parse(norm), steps

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None
        lo, hi = model_bounds(model)
        grad, logits = input_gradient(model, x, goal, targeted)
        direction = step_direction(grad, self.norm)
        best = x.clone()
        done = is_adversarial(logits, goal, targeted)
        with torch.no_grad():
            for k in range(1, self.steps + 1):
                adv = (x + (eps * k / self.steps) * direction).clamp(lo, hi)
                flipped = class_logits(model(adv)).argmax(1)
                flipped = (flipped == goal) if targeted else (flipped != goal)
                take = ~done & (flipped | (k == self.steps))
                best[take] = adv[take]
                done |= flipped
        return best, torch.ones(x.shape[0], dtype=torch.long, device=x.device)
