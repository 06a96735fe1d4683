"""Inference-time defenses as model wrappers (thesis ch. 6), applied to every query.

- ``rnd`` — Random Noise Defense (Qin et al., NeurIPS 2021): ``C(x + nu * delta)``, delta ~ N(0, I).
- ``dnd`` — Double Noise Defense (the thesis): ``y' = C(x + m * alpha) + n * beta`` with
  alpha, beta ~ N(0, I): noise on the query and on the output scores (two-column logits, so
  single- and two-logit models are treated alike).

Wrappers own a ``torch.Generator``: the same seed gives the same answers to the same query stream.
They are thread-safe (one lock around noise draw and forward), so a server may share them.

:data:`INFERENCE_DEFENSES` is the one registry of inference-time defenses (``none``, ``rnd``, ``dnd``);
each factory's keyword defaults are the one set of defaults. A :class:`DefenseSpec` names a defense and
the parameters the user wrote, parsed once at the edge from the one syntax ``NAME[:KEY=NUMBER]...``:

>>> spec = DefenseSpec.parse("dnd:m=0.02")        # CLI, YAML and HTTP all use this syntax
>>> defended = spec.build(model, seed=0)           # n takes the registry's default (0.5)
>>> labels = predict_labels(defended(images))
"""

from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass

import torch
from torch import nn

from medshield.errors import SpecError
from medshield.models.bounded import class_logits
from medshield.registry import Registry

INFERENCE_DEFENSES: Registry[nn.Module] = Registry("inference defense")


@INFERENCE_DEFENSES.register("none")
def no_defense(model: nn.Module, seed: int = 0) -> nn.Module:
    """The undefended model itself."""
    return model


class NoisyDefense(nn.Module):
    """Base for wrappers that draw Gaussian noise from their own seeded generator."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        self.num_classes = getattr(model, "num_classes", None)
        self.config = getattr(model, "config", None)

    def reset(self, seed: int | None = None) -> None:
        """Restart the noise stream (for reproducible evaluations)."""
        self.seed = self.seed if seed is None else seed
        self.generator.manual_seed(self.seed)

    def noise(self, like: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 0:
            return torch.zeros_like(like)
        return torch.randn(like.shape, generator=self.generator).to(like.device, like.dtype) * scale

    @property
    def randomized(self) -> bool:
        return True


@INFERENCE_DEFENSES.register("rnd")
class RND(NoisyDefense):
    """Random Noise Defense: Gaussian noise of std ``nu`` on every query (pixels, [0, 1] scale).
    Default nu = 0.02 (PneumoniaMNIST smallcnn: clean accuracy unchanged, 1.7% flips)."""

    def __init__(self, model: nn.Module, nu: float = 0.02, seed: int = 0) -> None:
        if nu < 0:
            raise ValueError(f"nu must be >= 0, got {nu}")
        super().__init__(model, seed)
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            noisy = x + self.noise(x, self.nu)
            return self.model(noisy)

    def extra_repr(self) -> str:
        return f"nu={self.nu}, seed={self.seed}"


@INFERENCE_DEFENSES.register("dnd")
class DND(NoisyDefense):
    """Double Noise Defense: query noise ``m * alpha`` and score noise ``n * beta``. Defaults m = 0.01,
    n = 0.5 (PneumoniaMNIST smallcnn: -0.5 points clean, 2.2% flips)."""

    def __init__(self, model: nn.Module, m: float = 0.01, n: float = 0.5, seed: int = 0) -> None:
        if m < 0 or n < 0:
            raise ValueError(f"m and n must be >= 0, got m={m}, n={n}")
        super().__init__(model, seed)
        self.m, self.n = m, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            scores = class_logits(self.model(x + self.noise(x, self.m)))
            return scores + self.noise(scores, self.n)

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, seed={self.seed}"


def defense_parameters(name: str) -> dict[str, float]:
    """The registry's defaults of defense ``name`` (its factory's keyword defaults, ``model`` and
    ``seed`` aside); unknown names raise with a did-you-mean."""
    factory = INFERENCE_DEFENSES.get(name)
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.name not in ("model", "seed", "self")}


SPEC_SYNTAX = "NAME[:KEY=NUMBER]..., e.g. rnd, rnd:nu=0.05 or dnd:m=0.01:n=0.5"


@dataclass(frozen=True)
class DefenseSpec:
    """An inference-time defense and the parameters the user gave explicitly (``params`` holds only
    those, in the registry's order; the registry's defaults fill the rest at build time, see
    :meth:`resolved`). Built once at the edge by :meth:`parse` or :meth:`of`; ``str(spec)`` gives the
    spec back in the same syntax (``rnd``, ``dnd:m=0.02``)."""

    name: str
    params: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str | DefenseSpec) -> DefenseSpec:
        """The one parser: ``"dnd:m=0.01:n=0.5"`` -> ``DefenseSpec("dnd", (("m", 0.01), ("n", 0.5)))``.
        Unknown names and parameters, and malformed items, raise :class:`SpecError` (one line)."""
        if isinstance(text, DefenseSpec):
            return text
        name, *items = [part.strip() for part in str(text).strip().split(":")]
        params: dict[str, float] = {}
        for item in items:
            key, sep, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                sep = ""
            if not sep or not key.strip():
                raise SpecError(f"bad defense parameter {item!r} in {text!r}: expected NAME:KEY=NUMBER[:KEY=NUMBER], "
                                f"e.g. rnd:nu=0.05 or dnd:m=0.01:n=0.5")
            params[key.strip()] = number
        return cls.of(name, **params)

    @classmethod
    def of(cls, name: str, **params: float) -> DefenseSpec:
        """A checked spec from a name and explicit parameters (``DefenseSpec.of("rnd", nu=0.04)``)."""
        key = name.strip().lower()
        known = defense_parameters(key)
        for k, v in params.items():
            if k not in known:
                raise SpecError(f"defense {key!r} has no parameter {k!r} (parameters: {', '.join(known) or 'none'})")
            if not math.isfinite(float(v)) or float(v) < 0:
                raise SpecError(f"defense parameter {key}:{k} must be a finite number >= 0, got {v}")
        return cls(key, tuple((k, float(params[k])) for k in known if k in params))

    @property
    def explicit(self) -> dict[str, float]:
        """The parameters the user wrote."""
        return dict(self.params)

    def resolved(self) -> dict[str, float]:
        """Every parameter: the registry's defaults updated with the explicit ones."""
        return {**defense_parameters(self.name), **self.explicit}

    @property
    def is_none(self) -> bool:
        return self.name == "none"

    def label(self) -> str:
        """The canonical label with every parameter, e.g. ``dnd:m=0.01:n=0.5`` (``none``): records'
        ``defense_spec`` field."""
        return ":".join([self.name, *(f"{k}={v:g}" for k, v in self.resolved().items())])

    def build(self, model: nn.Module, seed: int = 0) -> nn.Module:
        """The defended model (``none``: ``model`` itself)."""
        return INFERENCE_DEFENSES.create(self.name, model=model, seed=seed, **self.resolved())

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v:g}" for k, v in self.params)])



NO_DEFENSE = DefenseSpec("none")
"""The undefended model."""
