"""RayS (Chen & Gu, KDD 2020, "RayS: a ray searching method for hard-label adversarial attack"), L-inf,
batched across images. The attack searches over sign directions ``d in {-1, +1}^D`` for the ray from
``x0`` that reaches the decision boundary soonest: ``g(d) = min r`` with ``clip(x0 + r d)`` adversarial,
which is the L-inf distance of that point. Directions change by flipping the signs of one block of
the flattened image at a time, with blocks halving in size stage by stage (hierarchical search); a
flip costs one query when it cannot help (``clip(x0 + g_best d')`` is not adversarial), otherwise a
binary search on ``[0, g_best]`` finds the new, smaller ``g``. Maths after the paper and
uclaml/RayS ``RayS.py``."""

from __future__ import annotations

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.base import DecisionAttack, Progress, active_rows
from medshield.attacks.geometry import expand
from medshield.attacks.decision.oracle import LabelOracle
from medshield.types import Norm


@DECISION_ATTACKS.register("rays")
class RayS(DecisionAttack):
    """RayS, L-inf only (the constructor accepts ``norm`` for a uniform interface and ignores it: the
    attack always minimises and records L-inf distance), untargeted or targeted. Binary searches stop
    at L-inf width ``tol``. Images ``[N, C, H, W]`` in [0, 1]. ``starts`` are not used (the search
    starts from the all-ones sign direction, as the paper).

    Example:
        attack = RayS()
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 2000], seed=0)
        results[2000].linf.median()
    """

    norm = Norm.LINF

    def __init__(self, *, norm: Norm | str = Norm.LINF, tol: float = 1e-4) -> None:
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        self.tol = tol

    @staticmethod
    def ray(x0: torch.Tensor, sign: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (x0 + expand(r, x0) * sign).clamp(0, 1)

    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        n, x0_all = oracle.n, oracle.images
        dim = x0_all[0].numel()
        already = oracle.query(torch.arange(n), x0_all)
        sign = torch.ones(n, dim)
        best = torch.full((n,), float("inf"))
        level, block = 0, 0
        active = ~already
        while (idx := active_rows(active, oracle)).numel():
            size = -(-dim // 2**level)
            start, end = block * size, min(dim, (block + 1) * size)
            trial = sign[idx].clone()
            trial[:, start:end] *= -1
            self.search(oracle, idx, trial, sign, best)
            block += 1
            if block == 2**level or end == dim:
                level, block = (0 if size == 1 else level + 1), 0
            if progress:
                progress(oracle)

    def search(self, oracle: LabelOracle, idx: torch.Tensor, trial: torch.Tensor, sign: torch.Tensor,
               best: torch.Tensor) -> None:
        """One query per image at the current best radius (1 while none is known) along ``trial``; where
        adversarial, bisect ``[0, radius]`` to ``tol`` and keep ``trial`` with its smaller radius."""
        x0 = oracle.images[idx]
        shape = x0.shape
        d = trial.view(shape)
        hi = best[idx].clamp(max=1.0)
        hit = oracle.query(idx, self.ray(x0, d, hi))
        rows = torch.nonzero(hit).squeeze(1)
        lo = torch.zeros(idx.numel())
        while (todo := rows[(hi[rows] - lo[rows] > self.tol) & ~oracle.exhausted[idx[rows]]]).numel():
            mid = (lo[todo] + hi[todo]) / 2
            adv = oracle.query(idx[todo], self.ray(x0[todo], d[todo], mid))
            hi[todo[adv]] = mid[adv]
            lo[todo[~adv]] = mid[~adv]
        better = rows[hi[rows] < best[idx[rows]]]
        best[idx[better]] = hi[better]
        sign[idx[better]] = trial[better]
