"""OPT (Cheng et al., ICLR 2019, "Query-efficient hard-label black-box attack: an optimization-based
approach") and the shared direction-search loop Sign-OPT reuses, batched across images. The maths
follows the paper and cmhcbb/attackbox ``attack/OPT_attack.py``."""

from __future__ import annotations

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.base import DecisionAttack, Progress
from medshield.attacks.decision.directions import INF, bisect, initial_directions, local_search
from medshield.attacks.decision.search import other_image_start
from medshield.attacks.geometry import expand, unit
from medshield.attacks.decision.oracle import LabelOracle
from medshield.types import Norm


class DirectionSearch(DecisionAttack):
    """Minimise ``g(theta)`` (distance to the boundary along unit direction ``theta``) with a
    zeroth-order gradient estimate (subclasses) and OPT's line search on the step ``alpha``."""

    def __init__(self, *, norm: Norm | str = Norm.L2, alpha: float = 0.2, beta: float = 0.001, n_directions: int = 100,
                 line_steps: int = 15) -> None:
        if Norm.parse(norm) != Norm.L2:
            raise ValueError(f"{type(self).__name__} minimises L2 distance only; use hsja or gbba for linf")
        if alpha <= 0 or beta <= 0 or n_directions < 1:
            raise ValueError("need alpha > 0, beta > 0, n_directions >= 1")
        self.norm = Norm.L2
        self.alpha, self.beta, self.n_directions, self.line_steps = alpha, beta, n_directions, line_steps

    def estimate(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                 beta: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient estimate of ``g`` at ``theta``; also the best probe ``(theta, g)`` seen on the way."""
        raise NotImplementedError

    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        n = oracle.n
        already = oracle.query(torch.arange(n), oracle.images)
        idx = torch.nonzero(~already).squeeze(1)
        theta, g = torch.zeros_like(oracle.images), torch.full((n,), INF)
        theta[idx], g[idx] = initial_directions(oracle, idx, generator, self.n_directions, starts)
        self._fallback_start(oracle, idx[~torch.isfinite(g[idx])], theta, g, generator)
        alpha, beta = torch.full((n,), self.alpha), torch.full((n,), self.beta)
        active = torch.isfinite(g)
        while (rows := torch.nonzero(active & ~oracle.exhausted).squeeze(1)).numel():
            x0 = oracle.images[rows]
            grad, probe_theta, probe_g = self.estimate(oracle, rows, x0, theta[rows], g[rows], beta[rows], generator)
            new_theta, new_g, new_alpha = self.line_search(oracle, rows, x0, theta[rows], g[rows], grad, alpha[rows], beta[rows])
            use_probe = probe_g < new_g
            theta[rows] = torch.where(expand(use_probe, x0), probe_theta, new_theta)
            g[rows] = torch.minimum(new_g, probe_g)
            small = new_alpha < 1e-4
            alpha[rows] = torch.where(small, torch.ones_like(new_alpha), new_alpha)
            beta[rows] = torch.where(small, beta[rows] * 0.1, beta[rows])
            active[rows[beta[rows] < 1e-8]] = False  # converged: nothing left to refine
            if progress:
                progress(oracle)

    def _fallback_start(self, oracle: LabelOracle, idx: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                        generator: torch.Generator) -> None:
        """Images no random direction fooled start from the direction to another image of the run."""
        if idx.numel() == 0:
            return
        found_x, found = other_image_start(oracle, idx, generator)
        idx, direction = idx[found], found_x[found] - oracle.images[idx[found]]
        length = direction.flatten(1).norm(dim=1)
        theta[idx] = unit(direction)
        g[idx] = bisect(oracle, idx, oracle.images[idx], theta[idx], torch.zeros_like(length), length,
                        torch.full_like(length, 1e-5))

    def line_search(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                    grad: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OPT's step search: double ``alpha`` while ``g`` keeps improving; if the first step fails,
        quarter it until it improves. Returns the new ``(theta, g, alpha)`` per row."""
        best_theta, best_g, alpha = theta.clone(), g.clone(), alpha.clone()
        tol = beta / 500
        grow = torch.ones(idx.numel(), dtype=torch.bool)
        for _ in range(self.line_steps):
            rows = torch.nonzero(grow & ~oracle.exhausted[idx]).squeeze(1)
            if rows.numel() == 0:
                break
            cand = unit(theta[rows] - expand(alpha[rows], x0) * grad[rows])
            cand_g = local_search(oracle, idx[rows], x0[rows], cand, best_g[rows], tol[rows])
            better = cand_g < best_g[rows]
            best_theta[rows[better]], best_g[rows[better]] = cand[better], cand_g[better]
            alpha[rows[better]] *= 2
            grow[rows[~better]] = False
        shrink = best_g >= g
        for _ in range(self.line_steps):
            rows = torch.nonzero(shrink & ~oracle.exhausted[idx]).squeeze(1)
            if rows.numel() == 0:
                break
            alpha[rows] *= 0.25
            cand = unit(theta[rows] - expand(alpha[rows], x0) * grad[rows])
            cand_g = local_search(oracle, idx[rows], x0[rows], cand, g[rows], tol[rows])
            better = cand_g < g[rows]
            best_theta[rows[better]], best_g[rows[better]] = cand[better], cand_g[better]
            shrink[rows[better]] = False
        return best_theta, best_g, alpha


def perturbed_directions(theta: torch.Tensor, beta: torch.Tensor, count: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` Gaussian probes per direction: ``(u, rep, unit(theta[rep] + beta[rep] * u))`` where ``rep``
    maps each probe to its row of ``theta`` (shared by OPT's and Sign-OPT's gradient estimates)."""
    m = theta.shape[0]
    u = unit(torch.randn((m * count, *theta.shape[1:]), generator=generator))
    rep = torch.arange(m).repeat_interleave(count)
    return u, rep, unit(theta[rep] + expand(beta[rep], u) * u)


@DECISION_ATTACKS.register("opt")
class OPT(DirectionSearch):
    """OPT attack (Cheng et al. 2019), L2, untargeted or targeted: random gradient-free estimate of
    ``grad g(theta)`` from ``q`` Gaussian probes ``(g(theta + beta u) - g(theta)) / beta * u``, each
    probe's ``g`` found by a fine-grained + binary search. Images ``[N, C, H, W]`` in [0, 1].

    Example:
        attack = OPT()
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 5000], seed=0)
        results[5000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, alpha: float = 0.2, beta: float = 0.001, n_directions: int = 100,
                 q: int = 10, line_steps: int = 15) -> None:
        super().__init__(norm=norm, alpha=alpha, beta=beta, n_directions=n_directions, line_steps=line_steps)
        self.q = q

    def estimate(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
                 beta: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, q = idx.numel(), self.q
        u, rep, probe = perturbed_directions(theta, beta, q, generator)
        g1 = local_search(oracle, idx[rep], x0[rep], probe, g[rep], beta[rep] / 500)
        diff = torch.where(torch.isfinite(g1), g1 - g[rep], torch.zeros_like(g1)) / beta[rep]
        grad = (expand(diff, u) * u).view(m, q, *x0.shape[1:]).mean(dim=1)
        best = g1.view(m, q).argmin(dim=1)
        pick = torch.arange(m) * q + best
        return grad, probe[pick], g1[pick]
