"""The Boundary attack (Brendel, Rauber & Bethge, ICLR 2018), batched across images: a random walk
along the decision boundary that shrinks the distance to the original, with step sizes adapted to the
recent success rates (as the paper and foolbox's ``BoundaryAttack``)."""

from __future__ import annotations

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.base import DecisionAttack, Progress, active_rows
from medshield.attacks.decision.search import start_points
from medshield.attacks.geometry import expand, flat_norm, unit
from medshield.attacks.decision.oracle import LabelOracle
from medshield.types import Norm


@DECISION_ATTACKS.register("boundary")
class BoundaryAttack(DecisionAttack):
    """Boundary attack, L2. Each step proposes an orthogonal (spherical) step of relative size
    ``spherical_step`` and a step toward the original of relative size ``source_step``; both
    candidates are queried (two queries per image per step) and the full candidate is kept if
    adversarial. Every ``window`` steps each size is multiplied or divided by ``adaptation`` depending
    on whether its success rate is above 0.5 (spherical) or 0.2 (source), as foolbox.

    Example:
        attack = BoundaryAttack()
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 5000], seed=0)
        results[5000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, spherical_step: float = 0.01, source_step: float = 0.01,
                 adaptation: float = 1.5, window: int = 10) -> None:
        if Norm.parse(norm) != Norm.L2:
            raise ValueError("the Boundary attack minimises L2 distance only")
        self.norm = Norm.L2
        self.spherical_step, self.source_step, self.adaptation, self.window = spherical_step, source_step, adaptation, window

    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        x_adv, active = start_points(oracle, generator, starts, Norm.L2, 1e-3)
        n = oracle.n
        sph, src = torch.full((n,), self.spherical_step), torch.full((n,), self.source_step)
        sph_hits, src_hits = torch.zeros(n), torch.zeros(n)
        step = 0
        while (idx := active_rows(active, oracle)).numel():
            step += 1
            x0, xa = oracle.images[idx], x_adv[idx]
            spherical, full = self.candidates(x0, xa, sph[idx], src[idx], generator)
            m = idx.numel()
            answers = oracle.query(torch.cat([idx, idx]), torch.cat([spherical, full]))
            ok_sph, ok_full = answers[:m], answers[m:]
            x_adv[idx[ok_full]] = full[ok_full]
            sph_hits[idx] += ok_sph.float()
            src_hits[idx] += (ok_full & ok_sph).float()
            if step % self.window == 0:
                rate_sph, rate_src = sph_hits[idx] / self.window, src_hits[idx] / self.window
                a = self.adaptation
                sph[idx] = torch.where(rate_sph > 0.5, sph[idx] * a, sph[idx] / a)
                src[idx] = torch.where(rate_src > 0.2, src[idx] * a, src[idx] / a)
                sph_hits[idx], src_hits[idx] = 0, 0
                active[idx[src[idx] < 1e-9]] = False  # converged
            if progress and step % self.window == 0:
                progress(oracle)

    @staticmethod
    def candidates(x0: torch.Tensor, x_adv: torch.Tensor, spherical_step: torch.Tensor, source_step: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The spherical candidate (same distance to ``x0``, rotated by a random orthogonal step) and the
        full candidate (then moved toward ``x0`` by ``source_step`` of the distance)."""
        to_src = x0 - x_adv
        dist = flat_norm(to_src)
        direction = unit(to_src)
        eta = torch.randn(x_adv.shape, generator=generator)
        eta = eta - expand((eta.flatten(1) * direction.flatten(1)).sum(1), eta) * direction
        eta = unit(eta) * expand(spherical_step, eta) * dist
        moved = x_adv + eta
        spherical = x0 - unit(x0 - moved) * dist
        full = spherical + expand(source_step, x0) * dist * unit(x0 - spherical)
        return spherical.clamp(0, 1), full.clamp(0, 1)
