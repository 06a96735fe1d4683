"""The oracle-driven searches decision-based attacks share: batched binary searches to the decision
boundary and adversarial starting points. All functions are batched over rows (one row per query point)
and send each round of queries as one oracle call; the Lp geometry they use (blends, distances, unit
directions) is :mod:`medshield.attacks.geometry`."""

from __future__ import annotations

import math

import torch

from medshield.attacks.decision.oracle import LabelOracle
from medshield.attacks.geometry import blend
from medshield.types import Norm


def binary_search(oracle: LabelOracle, idx: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor,
                  norm: Norm, tol: float) -> torch.Tensor:
    """Move adversarial ``x_adv`` toward ``x0`` until within relative tolerance ``tol`` of the boundary;
    returns the adversarial side (every returned row was answered adversarial, or is the input)."""
    if idx.numel() == 0:
        return x_adv
    low, high = torch.zeros(idx.numel()), torch.ones(idx.numel())
    for _ in range(max(1, math.ceil(math.log2(1.0 / tol)))):
        mid = (low + high) / 2
        adv = oracle.query(idx, blend(x0, x_adv, mid, norm))
        high = torch.where(adv, mid, high)
        low = torch.where(adv, low, mid)
    return blend(x0, x_adv, high, norm)


def noise_start(oracle: LabelOracle, idx: torch.Tensor, generator: torch.Generator,
                 max_tries: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform-noise search for an adversarial point per image (HSJA's initialisation), one batched
    query per round; then a blend search from the original toward that noise (as HSJA). Returns
    ``(x_adv, found)``; rows not found keep the original image."""
    x0 = oracle.images[idx]
    x_adv, found = x0.clone(), torch.zeros(idx.numel(), dtype=torch.bool)
    for _ in range(max_tries):
        todo = torch.nonzero(~found & ~oracle.exhausted[idx]).squeeze(1)
        if todo.numel() == 0:
            break
        noise = torch.rand(todo.numel(), *x0.shape[1:], generator=generator)
        hit = oracle.query(idx[todo], noise)
        x_adv[todo[hit]] = noise[hit]
        found[todo[hit]] = True
    return x_adv, found


def other_image_start(oracle: LabelOracle, idx: torch.Tensor, generator: torch.Generator,
                      max_tries: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback start when noise is never adversarial (common on 2-class medical models): the other
    images of the run, in a seeded random order, one batched query per round; then, for images still
    without a start (every attacked image of one class), the oracle's ``start_pool`` in its order."""
    x0 = oracle.images[idx]
    x_adv, found = x0.clone(), torch.zeros(idx.numel(), dtype=torch.bool)
    order = torch.randperm(oracle.n, generator=generator)
    for k in range(min(max_tries, oracle.n)):
        todo = torch.nonzero(~found & ~oracle.exhausted[idx]).squeeze(1)
        if todo.numel() == 0:
            break
        cand_idx = order[(torch.arange(todo.numel()) + k) % oracle.n]
        cand_idx = torch.where(cand_idx == idx[todo], order[(k + todo.numel()) % oracle.n], cand_idx)
        cand = oracle.images[cand_idx]
        hit = oracle.query(idx[todo], cand) & (cand_idx != idx[todo])
        x_adv[todo[hit]] = cand[hit]
        found[todo[hit]] = True
    pool = oracle.start_pool
    for k in range(0 if pool is None else min(max_tries, pool.shape[0])):
        todo = torch.nonzero(~found & ~oracle.exhausted[idx]).squeeze(1)
        if todo.numel() == 0:
            break
        cand = pool[k].expand(todo.numel(), *pool.shape[1:]).clone()
        hit = oracle.query(idx[todo], cand)
        x_adv[todo[hit]] = cand[hit]
        found[todo[hit]] = True
    return x_adv, found


def start_points(oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None,
                 norm: Norm, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Common initialisation: query each original once (already-adversarial images are done at
    distance 0), find an adversarial start for the rest (``starts`` if given, e.g. images of the
    target class, else uniform noise) and binary-search it to the boundary.

    Returns ``(x_adv [N, ...], active bool [N])``."""
    n = oracle.n
    all_idx = torch.arange(n)
    already = oracle.query(all_idx, oracle.images)
    x_adv = oracle.images.clone()
    todo = torch.nonzero(~already).squeeze(1)
    if starts is not None:
        ok = oracle.query(todo, starts[todo])
        x_adv[todo[ok]] = starts[todo][ok]
        found_idx = todo[ok]
        missing = todo[~ok]
    else:
        found_idx, missing = todo[:0], todo
    for search in (noise_start, other_image_start):
        if missing.numel():
            found_x, found = search(oracle, missing, generator)
            x_adv[missing[found]] = found_x[found]
            found_idx = torch.cat([found_idx, missing[found]])
            missing = missing[~found]
    x_adv[found_idx] = binary_search(oracle, found_idx, oracle.images[found_idx], x_adv[found_idx], norm, tol)
    active = torch.zeros(n, dtype=torch.bool)
    active[found_idx] = True
    return x_adv, active
