"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, *Square Attack: a query-efficient
black-box adversarial attack via random search*): score-based random search with square-shaped
updates at the corners of the ``eps`` ball; needs no gradients, so it checks for gradient masking.

L-inf: start from vertical stripes of ``+-eps``; each step redraws one random square window (size
from the schedule ``p``) with a random ``+-eps`` per channel and keeps it if the margin loss drops.
L2: start from a grid of "mountain" bumps with random signs scaled to norm ``eps``; each step moves
the mass of a second window into a new bump in the first window (total norm stays ``eps``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medshield.attacks.base import FixedEpsilonAttack, model_bounds
from medshield.attacks.geometry import norms, project
from medshield.attacks.losses import attack_objective
from medshield.models import class_logits
from medshield.types import Norm

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # the paper's schedule, for 10,000 queries


def square_fraction(p_init: float, step: int, steps: int) -> float:
    """Fraction of pixels the window covers at ``step``: ``p_init`` halved at the paper's iterations,
    rescaled to a run of ``steps`` queries."""
    i = int(step / steps * 10_000) if steps else step
    return p_init / 2 ** sum(i > h for h in HALVINGS)


def mountain(size: int, device: torch.device) -> torch.Tensor:
    """A peaked bump ``[size, size]`` of unit L2 norm: value at ring ``r`` (Chebyshev distance from the
    centre) is ``sum_{k >= r} 1 / (k + 1)^2``."""
    idx = torch.arange(size, device=device, dtype=torch.float32)
    centre = (size - 1) / 2
    ring = torch.maximum((idx[:, None] - centre).abs(), (idx[None, :] - centre).abs()).floor().long()
    top = int(ring.max())
    tail = torch.flip(torch.cumsum(torch.flip(1 / (torch.arange(top + 1, device=device) + 1.0) ** 2, [0]), 0), [0])
    bump = tail[ring]
    return bump / bump.norm()


def random_windows(n: int, h: int, w: int, size: int, generator: torch.Generator | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random ``size x size`` square per sample: ``(mask bool [n, 1, h, w], row offsets [n, h],
    column offsets [n, w])``; offsets are positions relative to the square's corner (clamped)."""
    gdev = generator.device if generator is not None else device
    r = torch.randint(0, h - size + 1, (n,), generator=generator, device=gdev).to(device)
    c = torch.randint(0, w - size + 1, (n,), generator=generator, device=gdev).to(device)
    dr = torch.arange(h, device=device)[None] - r[:, None]
    dc = torch.arange(w, device=device)[None] - c[:, None]
    in_r, in_c = (dr >= 0) & (dr < size), (dc >= 0) & (dc < size)
    mask = (in_r[:, :, None] & in_c[:, None, :])[:, None]
    return mask, dr.clamp(0, size - 1), dc.clamp(0, size - 1)


class Square(FixedEpsilonAttack):
    """Square Attack, score-based: ``steps`` model queries per image at most (one per step, plus the
    start); stops on an image once it is adversarial. ``p_init`` is the starting window fraction
    (0.8 as in AutoAttack for L-inf and L2). The loss is the logit margin (see :mod:`.losses`).
    ``queries`` counts forward passes per image.

    Example::

        sq = Square(norm="linf", steps=1000)
        res = sq.attack(model, images, labels, eps=4 / 255, generator=torch.Generator().manual_seed(0))
        print(res.success_rate, res.queries.float().mean())
    """

    name = "square"

    def __init__(self, *, norm: Norm | str = Norm.LINF, steps: int = 5000, p_init: float = 0.8) -> None:
        self.norm = Norm.parse(norm)
        if steps < 1 or not 0 < p_init <= 1:
            raise ValueError(f"steps must be >= 1 and p_init in (0, 1], got {steps}, {p_init}")
        self.steps, self.p_init = steps, p_init

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None
        bounds = model_bounds(model)
        n, ch, h, w = x.shape
        gdev = generator.device if generator is not None else x.device
        signs = lambda *shape: (torch.randint(0, 2, shape, generator=generator, device=gdev).to(x) * 2 - 1)  # noqa: E731
        if self.norm is Norm.LINF:
            adv = (x + eps * signs(n, ch, 1, w)).clamp(*bounds)
        else:
            adv = (x + self._l2_start(x, eps, signs)).clamp(*bounds)
        loss, done = self._score(model, adv, goal, targeted)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        for step in range(self.steps - 1):
            todo = (~done).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            size = max(min(round(math.sqrt(square_fraction(self.p_init, step, self.steps) * h * w)), h, w), 1)
            xs, cur = x[todo], adv[todo]
            if self.norm is Norm.LINF:
                cand = self._linf_candidate(xs, cur, eps, size, generator, signs)
            else:
                cand = self._l2_candidate(xs, cur, eps, size, generator, signs)
            cand = cand.clamp(*bounds)
            new_loss, new_done = self._score(model, cand, goal[todo], targeted)
            take = new_loss < loss[todo]
            rows = todo[take]
            adv[rows], loss[rows], done[rows] = cand[take], new_loss[take], new_done[take]
            queries[todo] += 1
        return adv, queries

    @torch.no_grad()
    def _score(self, model: nn.Module, p: torch.Tensor, goal: torch.Tensor, targeted: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin to minimise, adversarial?) per sample."""
        logits = model(p)
        pred = class_logits(logits).argmax(1)
        return -attack_objective("margin", logits, goal, targeted), (pred == goal) if targeted else (pred != goal)

    @staticmethod
    def _linf_candidate(x: torch.Tensor, adv: torch.Tensor, eps: float, size: int, generator, signs) -> torch.Tensor:
        n, ch, h, w = x.shape
        mask, _, _ = random_windows(n, h, w, size, generator, x.device)
        return torch.where(mask, x + eps * signs(n, ch, 1, 1), adv)

    @staticmethod
    def _l2_start(x: torch.Tensor, eps: float, signs) -> torch.Tensor:
        n, ch, h, w = x.shape
        tile = max(min(h, w) // 5, 1)
        bump = mountain(tile, x.device)
        delta = torch.zeros_like(x)
        for r in range(0, h - tile + 1, tile):
            for c in range(0, w - tile + 1, tile):
                delta[:, :, r:r + tile, c:c + tile] = bump * signs(n, ch, 1, 1)
        return delta * (eps / norms(delta, Norm.L2).clamp_min(1e-12)).view(-1, 1, 1, 1)

    @staticmethod
    def _l2_candidate(x: torch.Tensor, adv: torch.Tensor, eps: float, size: int, generator, signs) -> torch.Tensor:
        """Move the mass of window 2 into a new bump added to window 1, keeping the total norm at ``eps``."""
        n, ch, h, w = x.shape
        delta = adv - x
        first, dr, dc = random_windows(n, h, w, size, generator, x.device)
        second = random_windows(n, h, w, size, generator, x.device)[0] & ~first
        keep = delta * ~(first | second)
        old = delta * first
        room = (eps ** 2 - norms(keep, Norm.L2) ** 2).clamp_min(0)  # squared norm left for window 1
        bump = mountain(size, x.device)[dr[:, :, None], dc[:, None, :]][:, None] * first
        bump = bump * signs(n, ch, 1, 1)
        bump = bump / norms(bump, Norm.L2).clamp_min(1e-12).view(-1, 1, 1, 1)
        dot = (old * bump).flatten(1).sum(1)
        scale = -dot + (dot ** 2 - norms(old, Norm.L2) ** 2 + room).clamp_min(0).sqrt()
        new = keep + old + bump * scale.view(-1, 1, 1, 1)
        return x + project(new, eps, Norm.L2)
