"""FAB-T (Croce & Hein, ICML 2020, *Minimally distorted adversarial examples with a fast adaptive
boundary attack*), the targeted version used by AutoAttack. L-inf and L2.

Each step linearises the decision boundary between the true class ``y`` and the target ``t`` at the
current point, projects both the current point and the original image onto that hyperplane (within
the pixel box, minimal norm), and moves to a convex combination of the two projections, biased
towards the original (``alpha <= alpha_max``) and overshooting by ``eta``. After an adversarial
point, it steps back towards the original (``beta``), so the perturbation shrinks.
"""

from __future__ import annotations

import torch
from torch import nn

from medshield.attacks.base import MinimizationAttack, model_bounds
from medshield.attacks.geometry import norms, random_start
from medshield.attacks.losses import objective_and_gradient, top_targets
from medshield.models import class_logits
from medshield.types import Norm


def hyperplane_step(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, bounds: tuple[float, float], norm: Norm,
                    iters: int = 30) -> torch.Tensor:
    """The smallest ``delta`` (in ``norm``) with ``w . delta = c`` and ``p + delta`` inside ``bounds``,
    per sample. The solution has the form ``clamp(t * d, lo - p, hi - p)`` with ``d = sign(c w)``
    (L-inf) or ``d = sign(c) w`` (L2), and ``w . delta`` grows with ``t``: ``t`` is found by bisection.
    Where the box cannot reach the hyperplane, the point of the box closest to it is returned."""
    shape, n = p.shape, p.shape[0]
    wf, s = w.flatten(1), torch.sign(c)
    a = wf * s[:, None]
    d = torch.sign(a) if norm is Norm.LINF else a
    lo_box, hi_box = (bounds[0] - p).flatten(1), (bounds[1] - p).flatten(1)
    want = c.abs()
    reach = lambda t: torch.maximum(torch.minimum(t[:, None] * d, hi_box), lo_box)  # noqa: E731
    value = lambda t: (a * reach(t)).sum(1)  # noqa: E731
    if norm is Norm.LINF:
        top = torch.full((n,), float(bounds[1] - bounds[0]), device=p.device, dtype=p.dtype)
    else:
        top = want / a.pow(2).sum(1).clamp_min(1e-20)
        for _ in range(40):
            top = torch.where(value(top) < want, top * 2, top)
    low = torch.zeros_like(top)
    for _ in range(iters):
        mid = (low + top) / 2
        ok = value(mid) >= want
        top, low = torch.where(ok, mid, top), torch.where(ok, low, mid)
    delta = reach(top)
    return torch.where((c == 0)[:, None], torch.zeros_like(delta), delta).view(shape)


class FAB(MinimizationAttack):
    """FAB-T: for an untargeted call, runs towards each of the top-``targets`` wrong classes (by the
    clean logits; for two classes the other class) and keeps the smallest adversarial per image; a
    targeted call runs towards ``target_labels``. ``steps`` iterations per target and restart (one
    gradient call each, two where the point was adversarial and steps back);
    ``eta`` (overshoot), ``beta`` (backward step) and ``alpha_max`` as in the paper. Restarts after the
    first start from a random point at radius ``eps / 2`` (``eps`` given) around the image.
    Minimisation attack: ``eps=None`` returns each image's smallest adversarial found; with ``eps``,
    images already broken within ``eps`` are skipped and the result is clipped to ``eps``.

    Example::

        fab = FAB(norm="l2", steps=100, targets=9)
        res = fab.attack(model, images, labels, eps=None)
        print(res.l2[res.success].median())
    """

    name = "fab"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 100, targets: int = 9, restarts: int = 1,
                 eta: float = 1.05, beta: float = 0.9, alpha_max: float = 0.1) -> None:
        self.norm = Norm.parse(norm)
        if steps < 1 or targets < 1 or restarts < 1:
            raise ValueError(f"steps, targets and restarts must be >= 1, got {steps}, {targets}, {restarts}")
        if eta < 1 or not 0 < beta < 1 or not 0 <= alpha_max < 1:
            raise ValueError("eta must be >= 1, beta in (0, 1), alpha_max in [0, 1)")
        self.steps, self.targets, self.restarts = steps, targets, restarts
        self.eta, self.beta, self.alpha_max = eta, beta, alpha_max

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        best, best_norm = x.clone(), torch.full((n,), float("inf"), device=x.device)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        if targeted:
            plans = [(goal, None)]
        else:
            with torch.no_grad():
                clean = model(x)
            k = min(self.targets, class_logits(clean).shape[1] - 1)
            plans = [(top_targets(clean, goal, r), goal) for r in range(k)]
        for target, true in plans:
            for restart in range(self.restarts):
                todo = torch.arange(n, device=x.device) if eps is None else (best_norm > eps).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best, queries
                start = None if restart == 0 or eps is None else random_start(x[todo], eps / 2, self.norm, generator)
                adv, size, calls = self._descend(model, x[todo], target[todo], None if true is None else true[todo], start)
                better = size < best_norm[todo]
                rows = todo[better]
                best[rows], best_norm[rows] = adv[better], size[better]
                queries[todo] += calls
        return best, queries

    def _descend(self, model: nn.Module, x0: torch.Tensor, target: torch.Tensor, true: torch.Tensor | None,
                 start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FAB run towards ``target``; returns (smallest adversarial found, its norm (inf where none),
        gradient calls per image)."""
        bounds = model_bounds(model)
        view = (-1,) + (1,) * (x0.ndim - 1)
        xi = x0.clone() if start is None else (x0 + start).clamp(*bounds)
        best, best_norm = x0.clone(), torch.full((x0.shape[0],), float("inf"), device=x0.device)
        calls = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        for _ in range(self.steps):
            f, w, logits = objective_and_gradient(model, xi, "margin", target, True, true)
            adv = self._fools(logits, target, true)
            size = norms(xi - x0, self.norm)
            better = adv & (size < best_norm)
            best[better], best_norm = xi[better], torch.where(better, size, best_norm)
            calls += 1 + adv.long()
            if adv.any():  # backward step from the adversarial points, then relinearise there
                rows = adv.nonzero().squeeze(1)
                xi = torch.where(adv.view(view), ((1 - self.beta) * x0 + self.beta * xi), xi)
                f[rows], w[rows], _ = objective_and_gradient(model, xi[rows], "margin", target[rows], True,
                                                             None if true is None else true[rows])
            d_here = hyperplane_step(xi, w, -f, bounds, self.norm)
            d_orig = hyperplane_step(x0, w, -(f + (w * (x0 - xi)).flatten(1).sum(1)), bounds, self.norm)
            n_here, n_orig = norms(d_here, self.norm), norms(d_orig, self.norm)
            alpha = (n_here / (n_here + n_orig).clamp_min(1e-12)).clamp(max=self.alpha_max).view(view)
            xi = ((1 - alpha) * (xi + self.eta * d_here) + alpha * (x0 + self.eta * d_orig)).clamp(*bounds)
        with torch.no_grad():
            adv = self._fools(model(xi), target, true)
        size = norms(xi - x0, self.norm)
        better = adv & (size < best_norm)
        best[better], best_norm = xi[better], torch.where(better, size, best_norm)
        return best.detach(), best_norm, calls

    @staticmethod
    def _fools(logits: torch.Tensor, target: torch.Tensor, true: torch.Tensor | None) -> torch.Tensor:
        pred = class_logits(logits).argmax(1)
        return pred != true if true is not None else pred == target
