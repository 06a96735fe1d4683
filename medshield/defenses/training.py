"""Training-time defenses as hooks of the training loop (thesis ch. 4).

Each hook maps a training batch ``(x, y)`` to the batch the model trains on:

- ``at``: adversarial training — clean and adversarial examples concatenated
  (Goodfellow et al. 2015; Madry et al. 2018 when regenerated against the current model).
- ``ant``: Adversarial Noise Training (the thesis) — originals and adversarials interleaved,
  ``M = {O1, a1, O2, a2, ...}``, with Gaussian noise ``N(mu, sigma^2)`` added to every sample.
- ``noise``: Gaussian noise only.

Adversarial examples come either from the model being trained (``source="online"``, Madry-style)
or from a fixed pre-trained model (``source="fixed"``, as the thesis does).

>>> from medshield.attacks import ATTACKS
>>> hook = ANTHook(ATTACKS.create("mifgsm"), eps=2 / 255, sigma=0.05)
>>> train_model(model, dataset, run_dir, TrainConfig(), hook=hook)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from medshield.attacks import create_attack
from medshield.registry import Registry
from medshield.types import EPS, Norm


class Attack(Protocol):
    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float,
                 generator: torch.Generator | None = None) -> Any: ...


TRAINING_DEFENSES: Registry[Any] = Registry("training defense")


def gaussian_noise(x: torch.Tensor, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x + N(mean, std^2)`` clipped to [0, 1]; noise drawn from ``generator`` (on CPU, then moved)."""
    noise = torch.randn(x.shape, generator=generator).mul_(std).add_(mean)
    return (x + noise.to(x.device, x.dtype)).clamp_(0.0, 1.0)


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a0, b0, a1, b1, ...]`` along the batch dimension."""
    return torch.stack([a, b], dim=1).flatten(0, 1)


@dataclass
class _AdversarialSource:
    attack: Attack
    eps: float
    source: str = "online"
    fixed_model: nn.Module | None = None
    _frozen: nn.Module | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.source not in ("online", "fixed"):
            raise ValueError(f"source must be 'online' or 'fixed', got {self.source!r}")
        if self.source == "fixed":
            if self.fixed_model is None:
                raise ValueError("source='fixed' needs fixed_model (the pre-trained model to attack)")
            self._frozen = copy.deepcopy(self.fixed_model).eval().requires_grad_(False)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        target = self._frozen if self._frozen is not None else model
        if self._frozen is not None and next(self._frozen.parameters()).device != x.device:
            self._frozen.to(x.device)  # the training device, known only once batches arrive
        result = self.attack(target, x, y, eps=self.eps, generator=gen)
        return result.adversarial.detach()


@TRAINING_DEFENSES.register("at")
@dataclass
class AdversarialTrainingHook(_AdversarialSource):
    """AT: train on ``cat(clean, adversarial)`` with the same labels."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        adv = self.adversarial(model, x, y, gen)
        return torch.cat([x, adv]), torch.cat([y, y])


@TRAINING_DEFENSES.register("ant")
@dataclass
class ANTHook(_AdversarialSource):
    """ANT: ``{O1, a1, O2, a2, ...}`` interleaved, every sample plus ``N(mean, sigma^2)`` noise."""

    mean: float = 0.0
    sigma: float = 0.05

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        adv = self.adversarial(model, x, y, gen)
        return gaussian_noise(interleave(x, adv), self.mean, self.sigma, gen), interleave(y, y)


@TRAINING_DEFENSES.register("noise")
@dataclass
class NoiseHook:
    """Noise-only training: every sample plus ``N(mean, sigma^2)`` noise."""

    mean: float = 0.0
    sigma: float = 0.05

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_noise(x, self.mean, self.sigma, gen), y


def build_training_hook(defense: str, attack_name: str | None = None, eps: float = EPS, *, norm: Norm | str = Norm.LINF,
                        steps: int | None = None, source: str = "online", fixed_model: nn.Module | None = None,
                        mean: float = 0.0, sigma: float = 0.05) -> Any:
    """The hook for ``defense`` (``none`` gives ``None``): AT/ANT build their attack from the registry."""
    name = defense.lower()
    if name == "none":
        return None
    TRAINING_DEFENSES.get(name)  # unknown names fail with a suggestion
    if name == "noise":
        return NoiseHook(mean=mean, sigma=sigma)
    if not attack_name:
        raise ValueError(f"defense {name!r} needs a training attack (--train-attack)")
    attack = create_attack(attack_name, norm=norm, steps=steps)
    kwargs: dict[str, Any] = {"attack": attack, "eps": eps, "source": source, "fixed_model": fixed_model}
    if name == "ant":
        kwargs.update(mean=mean, sigma=sigma)
    return TRAINING_DEFENSES.create(name, **kwargs)
