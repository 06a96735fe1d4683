"""HopSkipJumpAttack (Chen, Jordan & Wainwright, IEEE S&P 2020) and GBBA, its gradient-projected
variant, batched across images: every image advances one iteration at a time and each batch of
queries (all images' Monte-Carlo samples, one binary-search step, one step-size trial) is one
oracle call. The maths follows the paper and Jianbo-Lab/HSJA ``hsja.py``."""

from __future__ import annotations

import math

import torch

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.base import DecisionAttack, Progress, active_rows
from medshield.attacks.decision.oracle import LabelOracle
from medshield.attacks.decision.search import binary_search, start_points
from medshield.attacks.geometry import distance, expand, flat_norm, rowdot, unit
from medshield.types import Norm


MIN_THETA = {Norm.L2: 1e-5, Norm.LINF: 1e-6}
"""Floor of the relative binary-search tolerance ``theta``. The paper's ``gamma / d^1.5`` (L2) is 4.6e-5
at 28x28 but 4.8e-7 at 128x128. HSJA derives both the boundary offset it leaves (``theta * dist``) and
the probes' normal component (about the same) from it: at 128 px and dist 13 that moves a (randomly
initialised) ResNet-18's logit margin by ~2e-6, only 27x its float32 batch-order noise, and every
binary search costs 22 instead of 17 queries. The floors leave grey 28x28 images unchanged."""


@DECISION_ATTACKS.register("hsja")
class HopSkipJump(DecisionAttack):
    """HopSkipJumpAttack, L2 or L-inf, untargeted or targeted (give the oracle ``targets`` and, ideally,
    ``starts`` = images of the target class). Images ``[N, C, H, W]`` in [0, 1].

    Per iteration ``t``: Monte-Carlo estimate of the boundary's normal with ``init_evals * sqrt(t)``
    samples (capped at ``max_evals``) at radius ``delta``; a geometric step-size search from
    ``||x_adv - x|| / sqrt(t)``; a binary search back to the boundary (tolerance ``theta``).

    ``first_step`` scales the first iteration's step (1.0, the paper's, by default). With a poor first
    gradient estimate (100 probes in 16,384 pixels) a shorter first step ends closer, but later
    iterations then start from smaller steps and progress more slowly: on ResNet-18 at 128 px, 8 images,
    3 seeds, ``first_step=0.35`` gave a mean median L2 of 5.05 vs 6.13 at 200 queries, but 2.83 vs 2.29
    at 500 and 1.33 vs 1.14 at 1,000 (measured). Use it only where the budget is about one iteration.

    Example:
        attack = HopSkipJump(norm="l2")
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 5000], seed=0)
        results[5000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, gamma: float = 1.0, init_evals: int = 100,
                 max_evals: int = 10_000, max_step_halvings: int = 25, max_rows: int = 32_768,
                 min_theta: float | None = None, first_step: float = 1.0) -> None:
        if gamma <= 0 or init_evals < 1 or max_evals < init_evals or (min_theta is not None and min_theta < 0):
            raise ValueError("need gamma > 0, 1 <= init_evals <= max_evals and min_theta >= 0")
        if not 0 < first_step <= 1:
            raise ValueError(f"first_step must be in (0, 1], got {first_step}")
        self.first_step = first_step
        self.norm = Norm.parse(norm)
        self.min_theta = MIN_THETA[self.norm] if min_theta is None else min_theta
        self.gamma, self.init_evals, self.max_evals = gamma, init_evals, max_evals
        self.max_step_halvings, self.max_rows = max_step_halvings, max_rows

    def theta(self, dim: int) -> float:
        """Binary-search tolerance (relative), as the paper: gamma / d^(3/2) (L2), gamma / d^2 (L-inf),
        but never below ``min_theta`` (default :data:`MIN_THETA`, for large images)."""
        theta = self.gamma / (dim * math.sqrt(dim)) if self.norm == Norm.L2 else self.gamma / dim**2
        return max(theta, self.min_theta)

    def adjust_gradient(self, grad: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Hook between the gradient estimate and the step (GBBA projects here). Identity for HSJA."""
        return grad

    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        x0_all = oracle.images
        dim = x0_all[0].numel()
        theta = self.theta(dim)
        x_adv, active = start_points(oracle, generator, starts, self.norm, theta)
        delta_dist = torch.zeros(oracle.n)
        t = 0
        while (idx := active_rows(active, oracle)).numel():
            t += 1
            x0, xa = x0_all[idx], x_adv[idx]
            dist = distance(xa, x0, self.norm)
            scale = math.sqrt(dim) * theta if self.norm == Norm.L2 else dim * theta
            delta = torch.full_like(dist, 0.1) if t == 1 else scale * delta_dist[idx]
            n_evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            grad = self.estimate_gradient(oracle, idx, xa, delta, n_evals, generator)
            grad = self.adjust_gradient(grad, x0, xa)
            epsilon = dist * self.first_step if t == 1 else dist / math.sqrt(t)
            x_adv[idx] = self.step(oracle, idx, x0, xa, grad, epsilon, theta)
            delta_dist[idx] = distance(x_adv[idx], x0, self.norm)
            if progress:
                progress(oracle)

    def step(self, oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
             epsilon: torch.Tensor, theta: float) -> torch.Tensor:
        """HSJA's update: a geometric step-size search from ``epsilon`` along ``grad`` (its sign for
        L-inf), then a binary search back to the boundary. Returns the new boundary points (rows whose
        step never stayed adversarial keep ``x_adv``)."""
        update = grad if self.norm == Norm.L2 else grad.sign()
        stepped, ok = self.step_size_search(oracle, idx, x_adv, update, epsilon)
        out = x_adv.clone()
        out[ok] = binary_search(oracle, idx[ok], x0[ok], stepped[ok], self.norm, theta)
        return out

    def estimate_gradient(self, oracle: LabelOracle, idx: torch.Tensor, x_adv: torch.Tensor, delta: torch.Tensor,
                          n_evals: int, generator: torch.Generator) -> torch.Tensor:
        """Monte-Carlo estimate of the boundary normal at each ``x_adv`` (unit L2), with the paper's
        baseline subtraction; images are grouped so one oracle call holds at most ``max_rows`` queries."""
        group = max(1, self.max_rows // n_evals)
        grads = []
        for rows in torch.arange(idx.numel()).split(group):
            xa = x_adv[rows]
            shape = (rows.numel(), n_evals, *xa.shape[1:])
            rv = self.directions(oracle, idx[rows], xa, n_evals, generator).view(shape)
            d, base = delta[rows].view(-1, 1, *([1] * (xa.ndim - 1))), xa.unsqueeze(1)
            perturbed = rv.mul_(d).add_(base).clamp_(0, 1)  # in place (the directions are fresh): x_adv + delta u
            sign = oracle.query(idx[rows].repeat_interleave(n_evals), perturbed.flatten(0, 1)).view(rows.numel(), n_evals)
            rv = (perturbed - base).div_(d)  # the clipped probes' directions
            fval = sign.float() * 2 - 1
            mean = fval.mean(dim=1, keepdim=True)
            centred = torch.where(mean.abs() == 1, fval, fval - mean)
            grads.append(unit(rv.mul_(centred.view(*centred.shape, *([1] * (xa.ndim - 1)))).mean(dim=1)))
        return torch.cat(grads)

    def directions(self, oracle: LabelOracle, idx: torch.Tensor, x_adv: torch.Tensor, n_evals: int,
                   generator: torch.Generator) -> torch.Tensor:
        """``n_evals`` random unit-L2 probe directions per row of ``x_adv`` (``[rows * n_evals, C, H, W]``,
        row-major): Gaussian (L2) or uniform in the cube (L-inf), as the paper. QEBA overrides this."""
        shape = (x_adv.shape[0] * n_evals, *x_adv.shape[1:])
        rv = torch.randn(shape, generator=generator) if self.norm == Norm.L2 else torch.rand(shape, generator=generator) * 2 - 1
        return rv.div_(flat_norm(rv))

    def step_size_search(self, oracle: LabelOracle, idx: torch.Tensor, x_adv: torch.Tensor, update: torch.Tensor,
                         epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric search: halve each image's step until ``x_adv + eps * update`` is adversarial."""
        eps, ok = epsilon.clone(), torch.zeros(idx.numel(), dtype=torch.bool)
        out = x_adv.clone()
        for _ in range(self.max_step_halvings):
            todo = torch.nonzero(~ok & ~oracle.exhausted[idx]).squeeze(1)
            if todo.numel() == 0:
                break
            cand = (x_adv[todo] + expand(eps[todo], x_adv) * update[todo]).clamp(0, 1)
            hit = oracle.query(idx[todo], cand)
            out[todo[hit]] = cand[hit]
            ok[todo[hit]] = True
            eps[todo[~hit]] /= 2
        return out, ok


@DECISION_ATTACKS.register("gbba")
class GBBA(HopSkipJump):
    """GBBA: HSJA whose estimated gradient ``g`` is projected when it conflicts with ``d = x_adv - x``:
    if ``cos(g, d) < 0`` then ``g <- g - (g.d / ||d||^2) d`` (the PCGrad projection, Yu et al. 2020),
    applied right after the gradient estimate. Same arguments and norms as :class:`HopSkipJump`.

    Example:
        attack = GBBA(norm="l2")
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 5000], seed=0)
        results[5000].l2.median()
    """

    def adjust_gradient(self, grad: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return pcgrad_project(grad, x_adv - x0)


def pcgrad_project(grad: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per row: remove ``grad``'s component along ``d`` where they conflict (``grad . d < 0``); rows
    are re-normalised to unit L2 (rows with ``d = 0`` pass through)."""
    dot = rowdot(grad, d)
    dd = rowdot(d, d)
    conflict = (dot < 0) & (dd > 0)
    coef = torch.where(conflict, dot / dd.clamp_min(1e-24), torch.zeros_like(dot))
    projected = grad - expand(coef, grad) * d
    return torch.where(expand(conflict, grad), unit(projected), grad) if projected.numel() else projected
