"""CGBA (Reza, Rahmati, Wu & Dai, ICCV 2023, "CGBA: curvature-aware geometric black-box attack"),
batched across images. Each iteration estimates the boundary's normal ``eta`` at the current boundary
point ``x_b`` (sign-weighted low-frequency DCT probes, as GeoDA/QEBA) and then searches the 2-D plane
spanned by ``v = unit(x_b - x0)`` and ``eta`` along the semicircle whose diameter is ``[x0, x_b]``. By
Thales' theorem that circle passes through the foot of the perpendicular from ``x0`` onto a flat
boundary, so the search finds a closer boundary point whatever the boundary's curvature.

Variants: ``"h"`` (CGBA-H) tries the point at angle ``theta / 2^k`` from ``v`` (``theta`` = angle
between ``v`` and ``eta``), ``k = 1, 2, ...``, until it is adversarial, then binary-searches the line
from ``x0`` to it; ``"semicircle"`` (CGBA) first finds a non-adversarial point at angle
``pi/2 (1 - 2^-k)`` and then bisects the arc between it and ``x_b``. The maths follows the paper and
Farhamdur/CGBA ``proposed_attack.py``."""

from __future__ import annotations

import math

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.search import binary_search
from medshield.attacks.geometry import expand, rowdot, unit
from medshield.attacks.decision.oracle import LabelOracle
from medshield.attacks.decision.qeba import QEBA
from medshield.types import Norm

VARIANTS = ("h", "semicircle")


@DECISION_ATTACKS.register("cgba")
class CGBA(QEBA):
    """CGBA-H (default) or CGBA, L2, untargeted or targeted. Normal estimate: ``init_evals * sqrt(t)``
    probes per iteration in the low-frequency subspace (``subspace``, ``ratio``, as :class:`QEBA`);
    then the semicircular boundary search of ``variant`` with at most ``max_halvings`` angle halvings.
    Images ``[N, C, H, W]`` in [0, 1].

    Example:
        attack = CGBA()
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 2000], seed=0)
        results[2000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, variant: str = "h", subspace: str = "dct", ratio: float | None = None,
                 gamma: float = 1.0, init_evals: int = 30, max_evals: int = 10_000, max_halvings: int = 15,
                 max_rows: int = 32_768) -> None:
        if Norm.parse(norm) != Norm.L2:
            raise ValueError("CGBA minimises L2 distance only; use rays (or hsja/qeba with linf) for linf")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(norm=norm, subspace=subspace, ratio=ratio, gamma=gamma, init_evals=init_evals,
                         max_evals=max_evals, max_step_halvings=max_halvings, max_rows=max_rows)
        self.variant = variant

    def step(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
             epsilon: torch.Tensor, theta: float) -> torch.Tensor:
        radius = (x_adv - x0).flatten(1).norm(dim=1)
        v = unit(x_adv - x0)
        along = rowdot(grad, v)
        w = grad - expand(along, grad) * v  # the normal's part orthogonal to v: the plane's second axis
        angle = torch.atan2(w.flatten(1).norm(dim=1), along)  # between v and the normal, in [0, pi]
        w = unit(w)
        if self.variant == "h":
            return self._halving(oracle, idx, x0, x_adv, v, w, radius, angle, theta)
        return self._semicircle(oracle, idx, x0, x_adv, v, w, radius, theta)

    @staticmethod
    def on_circle(x0: torch.Tensor, v: torch.Tensor, w: torch.Tensor, radius: torch.Tensor,
                  phi: torch.Tensor) -> torch.Tensor:
        """The point at angle ``phi`` from ``v`` (toward ``w``) on the circle of diameter ``[x0, x0 + radius v]``."""
        zeta = expand(torch.cos(phi), v) * v + expand(torch.sin(phi), w) * w
        return (x0 + expand(radius * torch.cos(phi), v) * zeta).clamp(0, 1)

    def _halving(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor, v: torch.Tensor,
                 w: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor, theta: float) -> torch.Tensor:
        """CGBA-H: halve the angle from ``angle / 2`` until the circle point is adversarial, then
        binary-search from ``x0`` toward it."""
        phi = angle / 2
        found = torch.zeros(idx.numel(), dtype=torch.bool)
        cand = x_adv.clone()
        for _ in range(self.max_step_halvings):
            todo = torch.nonzero(~found & ~oracle.exhausted[idx]).squeeze(1)
            if todo.numel() == 0:
                break
            point = self.on_circle(x0[todo], v[todo], w[todo], radius[todo], phi[todo])
            hit = oracle.query(idx[todo], point)
            cand[todo[hit]] = point[hit]
            found[todo[hit]] = True
            phi[todo[~hit]] /= 2
        out = x_adv.clone()
        out[found] = binary_search(oracle, idx[found], x0[found], cand[found], Norm.L2, theta)
        return out

    def _semicircle(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor,
                    v: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, theta: float) -> torch.Tensor:
        """CGBA: find a non-adversarial circle point at angle ``pi/2 (1 - 2^-k)``, then bisect the angle
        between it (clean) and 0 (``x_b``, adversarial) until the arc is shorter than ``theta * radius``."""
        m = idx.numel()
        clean, lo = torch.full((m,), math.nan), torch.zeros(m)  # lo: largest angle known adversarial
        for k in range(1, self.max_step_halvings + 1):
            todo = torch.nonzero(torch.isnan(clean) & ~oracle.exhausted[idx]).squeeze(1)
            if todo.numel() == 0:
                break
            phi = torch.full((todo.numel(),), math.pi / 2 * (1 - 2.0**-k))
            hit = oracle.query(idx[todo], self.on_circle(x0[todo], v[todo], w[todo], radius[todo], phi))
            clean[todo[~hit]] = phi[~hit]
            lo[todo[hit]] = phi[hit]
        hi = torch.where(torch.isnan(clean), lo, clean)
        steps = max(1, math.ceil(math.log2(math.pi / 2 / theta)))
        for _ in range(steps):
            todo = torch.nonzero((hi > lo) & ~oracle.exhausted[idx]).squeeze(1)
            if todo.numel() == 0:
                break
            mid = (lo[todo] + hi[todo]) / 2
            hit = oracle.query(idx[todo], self.on_circle(x0[todo], v[todo], w[todo], radius[todo], mid))
            lo[todo[hit]] = mid[hit]
            hi[todo[~hit]] = mid[~hit]
        out = x_adv.clone()
        moved = lo > 0
        out[moved] = self.on_circle(x0[moved], v[moved], w[moved], radius[moved], lo[moved])
        return out
