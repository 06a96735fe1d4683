"""Attacks on one finding of a multi-label classifier (one sigmoid logit per finding), leaving the
others unchanged: a chest X-ray model that reports 14 findings can be made to *hide* one
(pneumothorax -> absent) or *add* one while every other finding reads as before, which a reader
checking the other findings would not notice.

White-box: :class:`FindingAttack`, PGD (Madry et al. 2018) on a loss that drives finding ``k`` across
its threshold (binary cross-entropy toward the wanted decision) and keeps every other finding on its
side with a margin (a hinge penalty, after the multi-label attacks of Song et al. 2018, *Multi-label
adversarial perturbations*, and Zhou et al. 2020, *Generating multi-label adversarial examples by
linear programming*). Success = finding ``k`` flipped **and** all others unchanged.

Label-only: :func:`finding_label_fn` answers one finding's decision (an untargeted oracle flips it),
:func:`decision_code_fn` answers the whole decision vector as an integer code, so a *targeted*
oracle whose target is the wanted code succeeds only when finding ``k`` flipped and the others held;
:func:`code_starts` picks starting images that already show the wanted code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from medshield.attacks.base import FixedEpsilonAttack, model_bounds
from medshield.attacks.geometry import clip_to_budget, norms, project, random_start, step_direction
from medshield.models import eval_mode, predict
from medshield.types import AttackResult, Norm

Mode = Literal["hide", "add"]


def threshold_logits(thresholds: Sequence[float] | float, k: int) -> torch.Tensor:
    """Per-finding decision thresholds as logits ``[K]`` (probability ``t`` -> ``log(t / (1 - t))``)."""
    t = torch.full((k,), float(thresholds)) if isinstance(thresholds, (int, float)) else torch.tensor(list(thresholds), dtype=torch.float32)
    if t.numel() != k or ((t <= 0) | (t >= 1)).any():
        raise ValueError(f"need {k} thresholds strictly between 0 and 1, got {t.tolist()}")
    return torch.logit(t)


def decide(logits: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """0/1 decisions ``[N, K]``: logit >= threshold logit."""
    return (logits >= tau.to(logits.device)).long()


def wanted_decisions(decisions: torch.Tensor, finding: int, mode: Mode) -> torch.Tensor:
    """The decisions an attacker wants: as now, with finding ``finding`` absent (hide) or present (add)."""
    goal = decisions.clone()
    goal[:, finding] = 0 if mode == "hide" else 1
    return goal


class FindingAttack(FixedEpsilonAttack):
    """Hide (``mode="hide"``) or add (``"add"``) finding ``finding`` within ``eps``, others unchanged.

    Maximises ``-BCE(z_k - tau_k, wanted_k) - keep_weight * sum_{j != k} relu(margin - s_j (z_j - tau_j))``
    with PGD steps (``s_j = +1`` for a present finding, ``-1`` for an absent one; ``tau`` = threshold
    logits), keeping per image the last iterate that met the goal. ``labels`` at call time are the
    model's current 0/1 decisions ``[N, K]`` (or the decisions to keep). Images ``[N, C, H, W]`` in [0, 1].
    Result ``extras``: ``flipped`` (finding k reached the wanted side), ``others_unchanged``, ``decisions``.

    Example::

        atk = FindingAttack(finding=2, mode="hide", thresholds=[0.5] * 4, steps=20)
        dec = (torch.sigmoid(model(x)) >= 0.5).long()
        res = atk.attack(model, x, dec, eps=4 / 255)
        res.success_rate, res.extras["others_unchanged"].float().mean()
    """

    name = "finding_pgd"

    def __init__(self, finding: int, mode: Mode = "hide", thresholds: Sequence[float] | float = 0.5,
                 norm: Norm | str = Norm.LINF, steps: int = 20, rel_stepsize: float = 0.1,
                 keep_weight: float = 10.0, margin: float = 1.0, random_start: bool = False) -> None:
        if mode not in ("hide", "add"):
            raise ValueError(f"mode must be 'hide' or 'add', got {mode!r}")
        if steps < 1 or rel_stepsize <= 0 or keep_weight < 0 or margin < 0:
            raise ValueError("need steps >= 1, rel_stepsize > 0, keep_weight >= 0 and margin >= 0")
        self.finding, self.mode, self.thresholds = int(finding), mode, thresholds
        self.norm, self.steps, self.rel_stepsize = Norm.parse(norm), steps, rel_stepsize
        self.keep_weight, self.margin, self.random_start = keep_weight, margin, random_start

    def _tau(self, k: int, device: torch.device) -> torch.Tensor:
        if not 0 <= self.finding < k:
            raise ValueError(f"finding {self.finding} out of range for a model with {k} findings")
        return threshold_logits(self.thresholds, k).to(device)

    def objective(self, logits: torch.Tensor, wanted: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The summed loss to maximise (per-sample terms are independent of the batch)."""
        sign = wanted.float() * 2 - 1
        margins = sign * (logits.float() - tau)
        k = self.finding
        main = -F.softplus(-margins[:, k])  # = -BCE(z_k - tau_k, wanted_k)
        others = torch.ones_like(margins, dtype=torch.bool)
        others[:, k] = False
        keep = F.relu(self.margin - margins).masked_fill(~others, 0.0).sum(1)
        return (main - self.keep_weight * keep).sum()

    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        assert eps is not None
        lo, hi = model_bounds(model)
        wanted = wanted_decisions(goal, self.finding, self.mode)
        tau = self._tau(goal.shape[1], x.device)
        step = self.rel_stepsize * eps
        adv = (x + random_start(x, eps, self.norm, generator)).clamp(lo, hi) if self.random_start else x.clone()
        best, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            point = adv.detach().requires_grad_(True)
            logits = model(point)
            (grad,) = torch.autograd.grad(self.objective(logits, wanted, tau), point)
            ok = (decide(logits.detach(), tau) == wanted).all(1)
            best[ok], found = adv[ok], found | ok
            adv = (x + project(adv + step * step_direction(grad, self.norm) - x, eps, self.norm)).clamp(lo, hi).detach()
        with torch.no_grad():
            ok = (decide(model(adv), tau) == wanted).all(1)
        best[ok], found = adv[ok], found | ok
        queries = torch.full((x.shape[0],), self.steps, dtype=torch.long, device=x.device)
        return torch.where(found.view(-1, *([1] * (x.ndim - 1))), best, adv), queries

    def finalize(self, model: nn.Module, inputs: torch.Tensor, goal: torch.Tensor, adversarial: torch.Tensor,
                 eps: float | None, targeted: bool, queries: torch.Tensor | None = None,
                 norm: Norm | None = None) -> AttackResult:
        """Clip to the budget, then success = the wanted decision vector exactly (one forward pass)."""
        adv = clip_to_budget(inputs, adversarial, eps, norm or self.norm, model_bounds(model))
        with torch.no_grad(), eval_mode(model):
            logits = model(adv)
        tau = self._tau(goal.shape[1], inputs.device)
        wanted = wanted_decisions(goal, self.finding, self.mode)
        dec = decide(logits, tau)
        flipped = dec[:, self.finding] == wanted[:, self.finding]
        others = torch.ones_like(dec, dtype=torch.bool)
        others[:, self.finding] = False
        unchanged = ((dec == goal) | ~others).all(1)
        delta = adv - inputs
        if queries is None:
            queries = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
        return AttackResult(adversarial=adv, success=flipped & unchanged, linf=norms(delta, Norm.LINF),
                            l2=norms(delta, Norm.L2), queries=queries, seconds=0.0, logits=logits.detach(),
                            extras={"flipped": flipped, "others_unchanged": unchanged, "decisions": dec})


# ---- label-only access to findings ----

def decision_fn(model: nn.Module, thresholds: Sequence[float] | float = 0.5, batch_size: int = 4096):  # noqa: ANN201
    """Images -> 0/1 decisions ``[M, K]`` of a multi-label logits model (eval mode, no grad)."""

    def decisions(x: torch.Tensor) -> torch.Tensor:
        logits = predict(model, x, batch_size)
        return decide(logits, threshold_logits(thresholds, logits.shape[1]))

    return decisions


def finding_label_fn(model: nn.Module, finding: int, thresholds: Sequence[float] | float = 0.5,
                     batch_size: int = 4096):  # noqa: ANN201
    """A label function (for :class:`~medshield.attacks.decision.oracle.LabelOracle`) that answers only
    finding ``finding``'s decision (0/1): an untargeted decision attack then flips that finding."""
    decisions = decision_fn(model, thresholds, batch_size)
    return lambda x: decisions(x)[:, finding]


def codes(decisions: torch.Tensor) -> torch.Tensor:
    """Decision vectors ``[M, K]`` as integer codes ``sum_j d_j 2^j`` ``[M]`` (K <= 62)."""
    if decisions.shape[1] > 62:
        raise ValueError("decision codes need K <= 62 findings")
    weights = 2 ** torch.arange(decisions.shape[1], dtype=torch.long)
    return (decisions.long().cpu() * weights).sum(1)


def decision_code_fn(model: nn.Module, thresholds: Sequence[float] | float = 0.5, batch_size: int = 4096):  # noqa: ANN201
    """A label function answering the whole decision vector as one code: with a *targeted* oracle whose
    target is the wanted code, "adversarial" means finding k flipped and every other finding held."""
    decisions = decision_fn(model, thresholds, batch_size)
    return lambda x: codes(decisions(x))


def code_starts(images: torch.Tensor, targets: torch.Tensor, pool: torch.Tensor,
                pool_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the nearest (L2) pool image whose code equals its target code: starting points
    for a targeted decision attack. Returns ``(starts, found)``; rows without one keep the image."""
    starts, found = images.clone(), torch.zeros(images.shape[0], dtype=torch.bool)
    flat_pool = pool.flatten(1)
    for i in range(images.shape[0]):
        match = torch.nonzero(pool_codes == targets[i]).squeeze(1)
        if match.numel():
            d = (flat_pool[match] - images[i].flatten()).norm(dim=1)
            starts[i], found[i] = pool[match[d.argmin()]], True
    return starts, found
