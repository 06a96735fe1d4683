"""Attack base classes: fixed-epsilon and minimisation attacks (after foolbox 3's ``attacks/base.py``).

Subclasses implement ``_run(model, x, y, eps, targeted, target_labels, generator) -> (adversarial,
queries)``. The base class validates arguments, clones the inputs, puts the model in eval mode (and
restores it), times the call, clips the result to the budget and computes success, all in one place.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from medshield.attacks.geometry import clip_to_budget, norms
from medshield.models import class_logits, eval_mode
from medshield.types import AttackResult, Norm


def model_bounds(model: nn.Module) -> tuple[float, float]:
    return tuple(getattr(model, "bounds", (0.0, 1.0)))  # type: ignore[return-value]


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Summed cross-entropy on :func:`class_logits`; to be *maximised* (negated when targeted).

    The sum (not mean) keeps every sample's gradient independent of the batch size."""
    ce = F.cross_entropy(class_logits(logits).float(), labels, reduction="sum")
    return -ce if targeted else ce


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Bool ``[N]``: predicted class differs from ``labels`` (untargeted) or equals them (targeted)."""
    pred = class_logits(logits).argmax(dim=1)
    return pred == labels if targeted else pred != labels


def input_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad of attack_loss w.r.t. x, logits)``; only the input path is differentiated (no weight grads)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(attack_loss(logits, labels, targeted), x)
    return grad, logits.detach()


class Attack(ABC):
    """The call protocol of white-box attacks: hyperparameters as keyword-only constructor arguments;
    ``attack(model, inputs, labels, *, eps, targeted, target_labels, generator)`` (also ``attack.attack``)
    checks the arguments, runs :meth:`_run` and ends in :meth:`finalize`, the one place that clips to
    the budget and decides success. Returns a frozen :class:`AttackResult` with the logits."""

    name: ClassVar[str] = "attack"
    needs_eps: ClassVar[bool] = True
    norm: Norm = Norm.LINF

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | None,
                 targeted: bool = False, target_labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> AttackResult:
        return self.attack(model, inputs, labels, eps=eps, targeted=targeted, target_labels=target_labels,
                           generator=generator)

    def attack(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | None,
               targeted: bool = False, target_labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> AttackResult:
        """Run the attack on a batch ``inputs [N, C, H, W]`` in the model's bounds; ``labels [N]`` are the
        true classes (untargeted) and ``target_labels [N]`` the wanted ones (targeted)."""
        x, y = self._check(inputs, labels, eps, targeted, target_labels)
        goal = y if not targeted else target_labels.to(x.device, torch.long)  # type: ignore[union-attr]
        start = time.perf_counter()
        with eval_mode(model):
            if x.shape[0] == 0:
                adv, queries = x.clone(), torch.zeros(0, dtype=torch.long, device=x.device)
            else:
                adv, queries, *extras = self._run(model, x, goal, eps, targeted, generator)
            result = self.finalize(model, x, goal, adv.detach(), eps, targeted, queries)
            result.extras.update(*extras[:1])
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    def finalize(self, model: nn.Module, inputs: torch.Tensor, goal: torch.Tensor, adversarial: torch.Tensor,
                 eps: float | None, targeted: bool, queries: torch.Tensor | None = None,
                 norm: Norm | None = None) -> AttackResult:
        """Clip ``adversarial`` to the ``eps`` ball of ``norm`` (default: the attack's) and pixel bounds,
        then decide success with one forward pass. Reused to re-budget a minimisation attack's result."""
        norm = self.norm if norm is None else norm
        adv = clip_to_budget(inputs, adversarial, eps, norm, model_bounds(model))
        with torch.no_grad(), eval_mode(model):
            logits = model(adv)
        delta = adv - inputs
        if queries is None:
            queries = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
        return AttackResult(adversarial=adv, success=is_adversarial(logits, goal, targeted),
                            linf=norms(delta, Norm.LINF), l2=norms(delta, Norm.L2), queries=queries, seconds=0.0,
                            logits=logits.detach())

    def _check(self, inputs: torch.Tensor, labels: torch.Tensor, eps: float | None, targeted: bool,
               target_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
            raise ValueError("inputs must be a tensor [N, C, H, W]")
        if labels.shape[:1] != inputs.shape[:1]:
            raise ValueError(f"labels has {labels.shape[0]} rows but inputs has {inputs.shape[0]}")
        if eps is None and self.needs_eps:
            raise ValueError(f"{self.name} is a fixed-epsilon attack: pass eps")
        if eps is not None and (eps != eps or eps < 0):
            raise ValueError(f"eps must be >= 0, got {eps}")
        if targeted and (target_labels is None or target_labels.shape[:1] != inputs.shape[:1]):
            raise ValueError("a targeted attack needs target_labels with one entry per input")
        return inputs.clone().detach(), labels.detach().to(inputs.device, torch.long)

    @abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, goal: torch.Tensor, eps: float | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(adversarial [N, ...], queries [N] int64)``, optionally with a third item, a dict merged
        into the result's ``extras``; the base class clips and scores the adversarial."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class FixedEpsilonAttack(Attack):
    """An attack that spends a given budget ``eps`` (FGSM, BIM, PGD, MI-FGSM)."""

    needs_eps = True


class MinimizationAttack(Attack):
    """An attack that searches for the smallest perturbation (C&W); ``eps=None`` keeps the result
    unbounded, any other ``eps`` clips it to that budget before success is decided."""

    needs_eps = False
