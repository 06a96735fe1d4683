"""GBBA on a non-linear boundary where its projection fires: HSJA's estimated gradient conflicts with
``d = x_adv - x`` and GBBA's PCGrad projection changes the step (on a hyperplane it never fires)."""

from __future__ import annotations

import torch
from torch import nn

from medshield.attacks.decision import model_label_fn
from medshield.attacks.decision.hsja import GBBA, HopSkipJump

R0, ALPHA, SIDE = 0.005, 0.05, 4


class Wedge(nn.Module):
    """Two logits ``[0, |b| - R0 - ALPHA a]`` with ``a, b`` the image's coordinates along two orthonormal
    directions ``u, v`` from ``c``: the clean class is a thin wedge opening along ``+u`` (a non-linear,
    non-convex-complement boundary); the nearest adversarial lies ``R0 / sqrt(1 + ALPHA^2)`` from ``c``."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.u = nn.Parameter(u.flatten())
        self.v, self.c = v.flatten(), c.flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) - self.c
        s = (z @ self.v).abs() - R0 - ALPHA * (z @ self.u)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class Recording:
    """Records, per iteration, which rows the gradient adjustment changed and the step's new points."""

    def __init__(self) -> None:
        super().__init__()
        self.fired: list[torch.Tensor] = []
        self.steps: list[torch.Tensor] = []

    def adjust_gradient(self, grad: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        out = super().adjust_gradient(grad, x0, x_adv)  # type: ignore[misc]
        self.fired.append((out != grad).flatten(1).any(1))
        return out

    def step(self, *args: object) -> torch.Tensor:
        out = super().step(*args)  # type: ignore[misc]
        self.steps.append(out.clone())
        return out


class RecGBBA(Recording, GBBA):
    pass


class RecHSJA(Recording, HopSkipJump):
    pass


def test_gbba_projection_fires_and_changes_the_step() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(SIDE * SIDE, 2, generator=gen))
    u, v = (q[:, k].view(1, SIDE, SIDE) for k in (0, 1))
    c = torch.full((1, SIDE, SIDE), 0.5)
    model = Wedge(u, v, c)
    off = 0.01 * torch.randn(4, SIDE * SIDE, generator=gen)
    off = (off - (off @ q) @ q.T).view(4, 1, SIDE, SIDE)  # other coordinates: no effect on the label
    xs = c + off
    along = 0.3 * torch.linspace(0.8, 1.2, 4).view(-1, 1, 1, 1)
    starts = c + along * u + (R0 + ALPHA * along + 0.002) * v + off  # just outside the wedge, far along it
    labels = torch.zeros(4, dtype=torch.long)
    assert (model(xs).argmax(1) == 0).all() and (model(starts).argmax(1) == 1).all()

    gbba, hsja = RecGBBA(), RecHSJA()
    res_g = gbba(model_label_fn(model), xs, labels, [200, 1000], starts=starts, seed=0)
    res_h = hsja(model_label_fn(model), xs, labels, [200, 1000], starts=starts, seed=0)

    # The first boundary point grazes the wedge's wall far from c; the estimate (probe radius 0.1 spans both
    # walls) points back towards c: a conflict with d that GBBA removes.
    first = gbba.fired[0]
    assert first.any() and not hsja.fired[0].any()
    # Same seed, same probes: the first step is HSJA's exactly where nothing was projected, another one where it was.
    same = (gbba.steps[0] == hsja.steps[0]).flatten(1).all(1)
    assert torch.equal(same, ~first)
    assert not torch.equal(res_g[1000].adversarial, res_h[1000].adversarial)
    # Both stay valid attacks that approach the true nearest adversarial.
    optimum = R0 / (1 + ALPHA**2) ** 0.5
    for res in (res_g, res_h):
        assert res[1000].success.all()
        assert (model(res[1000].adversarial).argmax(1) == 1).all()
        assert (res[1000].l2 >= optimum * (1 - 1e-3)).all() and (res[1000].l2 <= 1.25 * optimum).all(), res[1000].l2
