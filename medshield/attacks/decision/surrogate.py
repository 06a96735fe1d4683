"""A surrogate-prior label-only attack: HopSkipJump guided by a substitute model the attacker trained
(e.g. another MedShield run on the same kind of data). Two uses of the surrogate, neither of which
costs a query to the target:

- **Transfer start** (as transfer-then-query attacks, e.g. Cheng et al.'s P-RGF setting): an L2
  gradient-ascent path on the surrogate's margin from ``x0``; the target is asked about the
  ``transfer_steps`` points of that path in one batch and the first adversarial one, binary-searched to
  the boundary, replaces HSJA's blend with noise or another image.
- **Biased sampling** (Brunner et al., ICCV 2019, "Guessing smart: biased sampling for efficient
  black-box adversarial attacks"; Cheng et al., NeurIPS 2019, "Improving black-box adversarial attacks
  with a transfer-based prior", P-RGF): HSJA's Monte-Carlo probes are ``u = unit(sqrt(lam) s g +
  sqrt(1 - lam) r)``, ``g`` the surrogate's unit margin gradient at the boundary point, ``s = +-1`` a
  random sign and ``r`` a random unit direction orthogonal to ``g``. The sign-weighted mean then
  estimates ``Sigma grad f`` with ``Sigma = lam g g^T + (1 - lam)/(d - 1) (I - g g^T)``: the surrogate's
  direction, with the sign and weight the target's answers give it, plus the target's own gradient in
  the rest of the space; a useless surrogate (``g . grad f = 0``) contributes nothing in expectation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.decision.base import Progress
from medshield.attacks.geometry import expand, rowdot, unit
from medshield.attacks.decision.hsja import HopSkipJump
from medshield.attacks.decision.oracle import LabelOracle
from medshield.models import class_logits, eval_mode, model_device
from medshield.types import Norm


def margin_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
                    batch_size: int = 512) -> torch.Tensor:
    """Unit-L2 gradient (w.r.t. the input) of the surrogate's adversarial margin: ``max_{j != y} z_j - z_y``
    (untargeted) or ``z_t - max_{j != t} z_j`` (targeted); rows of ``x`` pair with ``labels``/``targets``."""
    device = model_device(model)
    out = []
    with eval_mode(model):
        for rows in torch.arange(x.shape[0]).split(batch_size):
            xb = x[rows].detach().to(device).requires_grad_(True)
            z = class_logits(model(xb))
            ref = (targets if targets is not None else labels)[rows].to(device)
            own = z.gather(1, ref.view(-1, 1)).squeeze(1)
            other = z.scatter(1, ref.view(-1, 1), float("-inf")).amax(dim=1)
            margin = own - other if targets is not None else other - own
            (grad,) = torch.autograd.grad(margin.sum(), xb)
            out.append(grad.detach().cpu())
    return unit(torch.cat(out)) if out else x.new_zeros(x.shape)


@DECISION_ATTACKS.register("surrogate")
class SurrogateHSJA(HopSkipJump):
    """HSJA with a surrogate's transfer start and surrogate-biased probes, L2 or L-inf, untargeted or
    targeted. ``surrogate`` is an ``nn.Module`` mapping [0, 1] images to logits (a MedShield run loaded
    with :func:`medshield.models.load_run`); ``prior`` is ``lam``, the share of each probe along the
    surrogate's gradient; ``transfer_steps`` path points of L2 length ``transfer_step * sqrt(d)`` each.
    Other arguments as :class:`HopSkipJump`. Images ``[N, C, H, W]`` in [0, 1].

    Example:
        attack = SurrogateHSJA(surrogate=load_run("runs/substitute")[0])
        results = attack(model_label_fn(model), images, labels, budgets=[1000, 2000], seed=0)
        results[2000].l2.median()
    """

    def __init__(self, *, norm: Norm | str = Norm.L2, surrogate: nn.Module | None = None, prior: bool = True,
                 transfer_steps: int = 10, transfer_step: float = 0.02, gamma: float = 1.0, init_evals: int = 100,
                 max_evals: int = 10_000, max_step_halvings: int = 25, max_rows: int = 32_768) -> None:
        if surrogate is None:
            raise ValueError("the surrogate attack needs a surrogate model (e.g. --surrogate RUN)")
        if transfer_steps < 0 or transfer_step <= 0:
            raise ValueError("need transfer_steps >= 0 and transfer_step > 0")
        super().__init__(norm=norm, gamma=gamma, init_evals=init_evals, max_evals=max_evals,
                         max_step_halvings=max_step_halvings, max_rows=max_rows)
        self.surrogate, self.prior = surrogate, prior
        self.transfer_steps, self.transfer_step = transfer_steps, transfer_step

    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        if starts is None and self.transfer_steps:
            starts = self.transfer_starts(oracle)
        super().run(oracle, generator, starts=starts, progress=progress)

    def transfer_starts(self, oracle: LabelOracle) -> torch.Tensor:
        """The first target-adversarial point of each image's surrogate ascent path (the original
        image where none is; the common initialisation then falls back to HSJA's)."""
        x0 = oracle.images
        step = self.transfer_step * math.sqrt(x0[0].numel())
        x, path = x0.clone(), []
        for _ in range(self.transfer_steps):
            x = (x + step * margin_gradient(self.surrogate, x, oracle.labels, oracle.targets)).clamp(0, 1)
            path.append(x)
        points = torch.stack(path, dim=1)  # [N, K, C, H, W]
        k = self.transfer_steps
        todo = torch.nonzero(~oracle.query(torch.arange(oracle.n), x0)).squeeze(1)  # skip the misclassified
        adv = torch.zeros(oracle.n, k, dtype=torch.bool)
        adv[todo] = oracle.query(todo.repeat_interleave(k), points[todo].flatten(0, 1)).view(-1, k)
        first = torch.where(adv.any(dim=1), adv.float().argmax(dim=1), torch.full((oracle.n,), -1))
        starts = x0.clone()
        found = first >= 0
        starts[found] = points[found, first[found]]
        return starts

    def estimate_gradient(self, oracle: LabelOracle, idx: torch.Tensor, x_adv: torch.Tensor, delta: torch.Tensor,
                          n_evals: int, generator: torch.Generator) -> torch.Tensor:
        """HSJA's estimate ``h`` combined with the surrogate's unit margin gradient ``g``:
        ``unit(c g + sqrt(1 - c^2) cos_h unit(h - (h.g) g))`` with ``c = (h.g) / cos_h`` (clipped to
        [-1, 1]), the target's alignment with ``g`` as ``h`` measures it, and ``cos_h = sqrt(2n / (pi d))``,
        the expected alignment of a sign estimate from ``n`` probes: the cosine-optimal mix of the two."""
        h = super().estimate_gradient(oracle, idx, x_adv, delta, n_evals, generator)
        if not self.prior:
            return h
        targets = None if oracle.targets is None else oracle.targets[idx]
        g = margin_gradient(self.surrogate, x_adv, oracle.labels[idx], targets)
        cos_h = min(1.0, math.sqrt(2 * n_evals / (math.pi * x_adv[0].numel())))
        along = rowdot(h, g)
        c = (along / cos_h).clamp(-1, 1)
        perp = unit(h - expand(along, h) * g)
        return unit(expand(c, g) * g + expand((1 - c**2).sqrt() * cos_h, perp) * perp)
