"""Lp geometry written once, for every attack (gradient, minimisation and decision-based): per-sample
norms and distances, unit directions, steps, projections, blends and random starts.

Every function works on a batch ``[N, ...]`` and treats each sample (row) separately (after foolbox 3's
``gradient_descent_base.py``). Pixel bounds are handled by :func:`clip_to_budget`. The decision attacks'
oracle-driven searches (binary search to the boundary, starting points) are in
:mod:`medshield.attacks.decision.search`.
"""

from __future__ import annotations

import torch

from medshield.types import Norm

TINY = 1e-12


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row vector ``[N]`` viewed as ``[N, 1, 1, 1]`` for broadcasting against ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


_view = expand


def norms(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample L-inf or L2 size of ``delta`` ``[N, ...] -> [N]``."""
    flat = delta.flatten(1)
    if norm == Norm.LINF:
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2, dim=1)


def distance(a: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-row L2 or L-inf distance between two batches."""
    return norms(a - b, norm)


def flat_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-row L2 norm (at least :data:`TINY`), broadcastable back to ``x``'s shape."""
    return expand(norms(x, Norm.L2).clamp_min(TINY), x)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm."""
    return x / flat_norm(x)


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot product ``[N]``."""
    return (a.flatten(1) * b.flatten(1)).sum(dim=1)


def step_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit size: ``sign(g)`` for L-inf, ``g / ||g||_2`` for L2."""
    if norm == Norm.LINF:
        return grad.sign()
    return unit(grad)


def l1_normalise(grad: torch.Tensor) -> torch.Tensor:
    """``g / mean|g|`` per sample (MI-FGSM's normalisation; the mean keeps the scale size-independent)."""
    return grad / _view(grad.flatten(1).abs().mean(dim=1).clamp_min(TINY), grad)


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project each sample's perturbation onto the ``eps`` ball of ``norm``."""
    if norm == Norm.LINF:
        return delta.clamp(-eps, eps)
    size = norms(delta, Norm.L2)
    factor = torch.where(size > eps, eps / size.clamp_min(TINY), torch.ones_like(size))
    return delta * _view(factor, delta)


def random_start(inputs: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random point of the ``eps`` ball (L-inf box, or L2 ball via direction x radius)."""
    device = generator.device if generator is not None else inputs.device
    shape = inputs.shape
    if norm == Norm.LINF:
        noise = torch.rand(shape, generator=generator, device=device, dtype=inputs.dtype) * 2 - 1
        return (noise * eps).to(inputs.device)
    direction = torch.randn(shape, generator=generator, device=device, dtype=inputs.dtype)
    direction = step_direction(direction, Norm.L2)
    dims = inputs[0].numel()
    radius = torch.rand(shape[0], generator=generator, device=device, dtype=inputs.dtype) ** (1.0 / dims)
    return (direction * _view(radius * eps, direction)).to(inputs.device)


def clip_to_budget(inputs: torch.Tensor, adversarial: torch.Tensor, eps: float | None, norm: Norm,
                   bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """The one place a budget is enforced: project ``adversarial - inputs`` onto the ball, then clamp
    to the pixel bounds (clamping can only shrink an L-inf or L2 perturbation, so both hold)."""
    delta = adversarial - inputs
    if eps is not None:
        delta = project(delta, eps, norm)
    return (inputs + delta).clamp(*bounds)


def blend(x0: torch.Tensor, x_adv: torch.Tensor, alpha: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The point a fraction ``alpha`` (per row) of the way from ``x0`` to ``x_adv``: a convex combination
    (L2), or ``x_adv`` clipped into the L-inf ball of radius ``alpha * ||x_adv - x0||_inf`` (L-inf), as HSJA."""
    a = expand(alpha, x0)
    if norm == Norm.L2:
        return (1 - a) * x0 + a * x_adv
    radius = a * expand(distance(x_adv, x0, Norm.LINF), x0)
    return torch.minimum(torch.maximum(x_adv, x0 - radius), x0 + radius)
