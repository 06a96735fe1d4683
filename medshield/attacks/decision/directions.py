"""Direction-space geometry of OPT and Sign-OPT (Cheng et al. 2019, 2020): ``g(theta)``, the distance
along unit direction ``theta`` from ``x0`` to the decision boundary, found by batched fine-grained and
binary searches (one oracle call per round, one row per (image, direction))."""

from __future__ import annotations

import torch

from medshield.attacks.geometry import expand, unit
from medshield.attacks.decision.oracle import LabelOracle

INF = float("inf")


def along(oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, lbd: torch.Tensor) -> torch.Tensor:
    """Is ``x0 + lbd * theta`` adversarial, per row (one oracle call)."""
    return oracle.query(idx, x0 + expand(lbd, x0) * theta)


def bisect(oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor, lo: torch.Tensor,
           hi: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Shrink ``[lo, hi]`` (``hi`` adversarial) until ``hi - lo <= tol`` per row; returns ``hi``."""
    lo, hi = lo.clone(), hi.clone()
    while (todo := torch.nonzero((hi - lo > tol) & torch.isfinite(hi) & ~oracle.exhausted[idx]).squeeze(1)).numel():
        mid = (lo[todo] + hi[todo]) / 2
        adv = along(oracle, idx[todo], x0[todo], theta[todo], mid)
        hi[todo] = torch.where(adv, mid, hi[todo])
        lo[todo] = torch.where(adv, lo[todo], mid)
    return hi


def local_search(oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, theta: torch.Tensor,
                 initial: torch.Tensor, tol: torch.Tensor, max_lbd: float = 20.0) -> torch.Tensor:
    """OPT's ``fine_grained_binary_search_local``: from ``initial``, grow by 1.01 until adversarial (inf
    past ``max_lbd``) or shrink by 0.99 until not, then bisect to ``tol``. Returns ``g(theta)`` per row."""
    if idx.numel() == 0:
        return initial.clone()
    adv = along(oracle, idx, x0, theta, initial)
    lo = torch.where(adv, initial * 0.99, initial)
    hi = torch.where(adv, initial, initial * 1.01)
    grow = ~adv & torch.isfinite(initial)
    while (todo := torch.nonzero(grow & ~oracle.exhausted[idx]).squeeze(1)).numel():
        hit = along(oracle, idx[todo], x0[todo], theta[todo], hi[todo])
        grow[todo[hit]] = False
        miss = todo[~hit]
        lo[miss], hi[miss] = hi[miss], hi[miss] * 1.01
        over = miss[hi[miss] > max_lbd]
        hi[over], grow[over] = INF, False
    hi[grow] = INF  # out of budget before reaching the boundary
    shrink = adv.clone()
    while (todo := torch.nonzero(shrink & ~oracle.exhausted[idx]).squeeze(1)).numel():
        hit = along(oracle, idx[todo], x0[todo], theta[todo], lo[todo])
        shrink[todo[~hit]] = False
        more = todo[hit]
        hi[more], lo[more] = lo[more], lo[more] * 0.99
    return bisect(oracle, idx, x0, theta, lo, hi, tol)


def initial_directions(oracle: LabelOracle, idx: torch.Tensor, generator: torch.Generator, n_directions: int,
                       starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OPT's initialisation: ``n_directions`` random Gaussian directions per image (plus the direction
    to ``starts`` if given); those that are adversarial at their own length are bisected (tolerance
    1e-5, as the paper), and each image keeps its shortest. Returns ``(theta, g)``; ``g`` is inf where
    no direction worked."""
    x0 = oracle.images[idx]
    best_theta, best_g = torch.zeros_like(x0), torch.full((idx.numel(),), INF)
    rows = torch.arange(idx.numel())
    for k in range(n_directions + (starts is not None)):
        direction = (starts[idx] - x0) if (starts is not None and k == 0) else torch.randn(x0.shape, generator=generator)
        length = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
        theta = unit(direction)
        adv = along(oracle, idx, x0, theta, length)
        cand = rows[adv]
        if cand.numel() == 0:
            continue
        # As the paper: a direction is only searched if it beats the current best at that length.
        start_hi = torch.minimum(length[cand], best_g[cand])
        need = start_hi < length[cand]
        ok = torch.ones(cand.numel(), dtype=torch.bool)
        if need.any():
            ok[need] = along(oracle, idx[cand[need]], x0[cand[need]], theta[cand[need]], start_hi[need])
        cand, start_hi = cand[ok], start_hi[ok]
        g = bisect(oracle, idx[cand], x0[cand], theta[cand], torch.zeros_like(start_hi), start_hi,
                   torch.full_like(start_hi, 1e-5))
        better = g < best_g[cand]
        best_theta[cand[better]], best_g[cand[better]] = theta[cand[better]], g[better]
    return best_theta, best_g
