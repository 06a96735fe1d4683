"""Per-sample attack losses (to be *maximised*) shared by APGD, FAB, Square and FMN.

All take raw model outputs and go through :func:`class_logits`, so one-logit (sigmoid) models are
two-column models ``[0, z]`` here.

- ``ce``: cross-entropy of the true class (untargeted) or minus that of the target (targeted).
- ``margin``: the logit margin ``max_{j != y} z_j - z_y`` (C&W's, Carlini & Wagner 2017); targeted
  ``z_t - max_{j != t} z_j``, or ``z_t - z_y`` when the true class ``y`` is known (APGD-T, FAB-T).
- ``dlr``: the Difference of Logits Ratio (Croce & Hein 2020): the margin divided by
  ``z_pi1 - z_pi3`` (untargeted) or ``z_pi1 - (z_pi3 + z_pi4) / 2`` (targeted), which makes it
  invariant to shifts and rescaling of the logits. The denominator needs 3 (4) classes; with
  fewer it is undefined, so ``dlr`` falls back to the plain margin there (for two classes the
  margin is already the only quantity the decision depends on; only its scale differs).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from medshield.models import class_logits

LOSSES = ("ce", "margin", "dlr")


def _max_other(z: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return z.masked_fill(F.one_hot(cls, z.shape[1]).bool(), float("-inf")).amax(1)


def attack_objective(kind: str, logits: torch.Tensor, goal: torch.Tensor, targeted: bool = False,
                     true: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss ``[N]`` to maximise. ``goal`` is the true class (untargeted) or the target
    (targeted); ``true`` (targeted only) is the true class, for the ``z_t - z_y`` margins of APGD-T/FAB-T."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")
    z = class_logits(logits).float()
    if kind == "ce":
        ce = F.cross_entropy(z, goal, reduction="none")
        return -ce if targeted else ce
    own = z.gather(1, goal[:, None]).squeeze(1)
    if not targeted:
        margin = _max_other(z, goal) - own
    elif true is None:
        margin = own - _max_other(z, goal)
    else:
        margin = own - z.gather(1, true[:, None]).squeeze(1)
    need = 4 if targeted and true is not None else 3
    if kind == "margin" or z.shape[1] < need:
        return margin
    top = z.sort(dim=1, descending=True).values
    denom = top[:, 0] - (top[:, 2] if need == 3 else (top[:, 2] + top[:, 3]) / 2)
    return margin / (denom + 1e-12)


def objective_and_gradient(model: torch.nn.Module, x: torch.Tensor, kind: str, goal: torch.Tensor,
                           targeted: bool = False, true: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss [N], grad of loss w.r.t. x, logits)``; only the input path is differentiated."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = attack_objective(kind, logits, goal, targeted, true)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach(), logits.detach()


def top_targets(logits: torch.Tensor, true: torch.Tensor, rank: int) -> torch.Tensor:
    """The class ranked ``rank`` (0 = most likely) among the classes other than ``true``."""
    z = class_logits(logits).float()
    z = z.masked_fill(F.one_hot(true, z.shape[1]).bool(), float("-inf"))
    return z.sort(dim=1, descending=True).indices[:, rank]


def num_classes(logits: torch.Tensor) -> int:
    return class_logits(logits).shape[1]
