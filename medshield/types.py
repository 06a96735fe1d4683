"""Shared types: norms, attack results, JSON-able records, and the parsers that turn the user's text
(CLI options, YAML, HTTP) into typed values once, at the edge: eps (floats), query budgets (ints) and
comma lists. Inside the package only the typed values travel."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

import torch

from medshield.errors import SpecError


class Norm(StrEnum):
    """Perturbation norm."""

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        text = str(value).lower().replace("_", "").replace("-", "")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "l∞": cls.LINF, "l2": cls.L2, "2": cls.L2}
        if text not in aliases:
            raise ValueError(f"unknown norm {value!r}; use 'linf' or 'l2'")
        return aliases[text]


@dataclass(frozen=True)
class AttackResult:
    """What every attack returns (frozen: build a new one with :func:`dataclasses.replace`). Tensors are
    on the inputs' device; distances are per sample.

    ``queries`` counts model calls per sample (gradient calls for white-box attacks, label queries
    for decision-based ones). ``logits`` are the model's outputs on ``adversarial`` where the attack
    saw them (white-box attacks; None for label-only ones). ``extras`` holds attack-specific facts
    (a decision attack's ``budget``, ``batch_calls``, ``verify_fixed``).
    """

    adversarial: torch.Tensor
    success: torch.Tensor  # bool [N]
    linf: torch.Tensor  # float [N]
    l2: torch.Tensor  # float [N]
    queries: torch.Tensor  # int64 [N]
    seconds: float
    logits: torch.Tensor | None = None  # [N, K] or [N, 1] on adversarial
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, tensors, numpy scalars and enums to plain JSON types (numbers stay numbers)."""
    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, StrEnum):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist() if obj.numel() != 1 else obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):  # not valid JSON
        return None
    return obj


# ---- values parsed once at the edge -------------------------------------------------------------

EPS_GRID: tuple[float, ...] = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
"""The default white-box eps grid (L-inf, [0, 1] pixels): ``0.5/255,1/255,2/255,4/255,8/255``."""
EPS: float = 2 / 255
"""The default single eps (transfer attacks, adversarial training, defense evaluation)."""

_NUMBER = r"[0-9.eE+-]+"


def split_list(text: str | Sequence[Any] | None) -> list[str]:
    """The one comma-list splitter: ``"a, b,,c"`` -> ``["a", "b", "c"]``; a list is stripped the same way."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [str(v).strip() for v in items if str(v).strip()]


def parse_eps_value(text: str | float, norm: Norm | str = "linf") -> float:
    """One eps: a decimal or a fraction such as ``2/255``; L-inf budgets must lie in (0, 1] (pixels are
    in [0, 1]), L2 budgets must be positive and finite."""
    s = str(text).strip()
    if not re.fullmatch(rf"{_NUMBER}(/{_NUMBER})?", s):
        raise SpecError(f"cannot parse eps {s!r}; use numbers or fractions like 2/255")
    try:
        num, _, den = s.partition("/")
        value = float(Fraction(num) / Fraction(den)) if den else float(s)
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"cannot parse eps {s!r}; use numbers or fractions like 2/255") from None
    top = 1.0 if Norm.parse(norm) is Norm.LINF else math.inf
    if not (0 < value <= top) or not math.isfinite(value):
        limit = "(0, 1] for L-inf" if top == 1.0 else "> 0 for L2"
        raise SpecError(f"eps must be in {limit}, got {s}")
    return value


def parse_eps(text: str | float | Sequence[str | float], norm: Norm | str = "linf") -> tuple[float, ...]:
    """The eps parser: ``"0.5/255,2/255,0.03"`` (or a list of such items, or one number) -> floats."""
    items = split_list(text) if isinstance(text, (str, list, tuple)) else [text]
    if not items:
        raise SpecError("no eps given")
    return tuple(parse_eps_value(item, norm) for item in items)


def eps_label(eps: float) -> str:
    """``2/255`` when eps is a multiple of 1/510, else the decimal."""
    k = eps * 255
    return f"{k:g}/255" if abs(k * 2 - round(k * 2)) < 1e-6 else f"{eps:.4g}"


def parse_budgets(text: str | int | Sequence[str | int]) -> tuple[int, ...]:
    """The query-budget parser: ``"1000,5000"`` (or ints) -> sorted, distinct, positive ints."""
    items = split_list(text) if isinstance(text, (str, list, tuple)) else [text]
    out = set()
    for item in items:
        try:
            value = int(str(item).replace("_", ""))
        except ValueError:
            raise SpecError(f"query budgets are whole numbers, got {item!r}") from None
        if value < 1:
            raise SpecError(f"query budgets must be positive, got {value}")
        out.add(value)
    if not out:
        raise SpecError("no query budget given")
    return tuple(sorted(out))


def parse_floats(text: str | Sequence[str | float], what: str = "values") -> tuple[float, ...]:
    """``"0,0.01,0.02"`` -> floats (noise-level grids)."""
    try:
        return tuple(float(v) for v in split_list(text))
    except ValueError:
        raise SpecError(f"expected a comma-separated list of numbers for {what}, got {text!r}") from None
