"""Shared types: norms, attack results and JSON-able records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch


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


@dataclass
class AttackResult:
    """What every attack returns. Tensors are on the inputs' device; distances are per sample.

    ``queries`` counts model calls per sample (gradient calls for white-box attacks, label queries
    for decision-based ones).
    """

    adversarial: torch.Tensor
    success: torch.Tensor  # bool [N]
    linf: torch.Tensor  # float [N]
    l2: torch.Tensor  # float [N]
    queries: torch.Tensor  # int64 [N]
    seconds: float
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
