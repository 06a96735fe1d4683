"""AutoAttack-style sanity checks (after ``autoattack/checks.py``): flag evaluations that cannot be trusted.

Each check returns ``{"ok": bool, "detail": str}``; failures also raise a loud ``UserWarning``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from medshield.attacks.base import input_gradient
from medshield.attacks.geometry import norms
from medshield.models import eval_mode
from medshield.types import AttackResult, Norm

log = logging.getLogger(__name__)
Check = dict[str, Any]


def _result(name: str, ok: bool, detail: str) -> Check:
    if not ok:
        warnings.warn(f"MedShield check '{name}' FAILED: {detail}", UserWarning, stacklevel=3)
        log.warning("check %s failed: %s", name, detail)
    return {"ok": bool(ok), "detail": detail}


@torch.no_grad()
def check_randomised(model: nn.Module, x: torch.Tensor) -> Check:
    """Two forward passes in eval mode must agree; otherwise gradients and accuracy are noisy (use EOT)."""
    with eval_mode(model):
        a, b = model(x), model(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return _result("randomised_model", diff <= 1e-5, f"max difference between two forward passes {diff:.3g}")


@torch.no_grad()
def is_randomised(model: nn.Module, x: torch.Tensor) -> bool:
    """Quietly: do two forward passes on the same inputs differ (a randomised model or defense)?"""
    with eval_mode(model):
        a, b = model(x), model(x)
    return bool(a.numel()) and float((a - b).abs().max()) > 1e-5


@torch.no_grad()
def check_softmax_output(model: nn.Module, x: torch.Tensor) -> Check:
    """Outputs that are non-negative rows summing to 1 look like probabilities, not logits (weak gradients)."""
    with eval_mode(model):
        out = model(x).float()
    looks = out.ndim == 2 and out.shape[1] > 1 and bool((out >= 0).all()) and bool(torch.allclose(out.sum(1), torch.ones(out.shape[0]).to(out), atol=1e-4))
    return _result("logits_not_softmax", not looks, "model outputs sum to 1 per row: return logits, not softmax" if looks else "outputs look like logits")


def check_zero_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Check:
    """Samples whose input gradient is exactly zero cannot be attacked by gradients (masking)."""
    with eval_mode(model):
        grad, _ = input_gradient(model, x, labels.to(x.device), targeted=False)
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    return _result("zero_gradients", zero == 0, f"{zero}/{x.shape[0]} samples have an all-zero input gradient")


def check_result(result: AttackResult, inputs: torch.Tensor, eps: float | None, norm: Norm,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Check]:
    """Budget violations, out-of-bounds pixels and NaNs in an attack's output."""
    adv = result.adversarial
    nan = int((~torch.isfinite(adv)).flatten(1).any(1).sum())
    checks = {"no_nans": _result("no_nans", nan == 0, f"{nan} adversarial images contain NaN/inf")}
    if eps is not None:
        over = int((norms(adv - inputs, norm) > eps + 1e-6).sum())
        checks["within_budget"] = _result("within_budget", over == 0, f"{over} samples exceed eps={eps:.6g} ({norm})")
    out = int(((adv < bounds[0] - 1e-6) | (adv > bounds[1] + 1e-6)).flatten(1).any(1).sum())
    checks["within_bounds"] = _result("within_bounds", out == 0, f"{out} samples leave the pixel bounds {bounds}")
    return checks


def model_checks(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, Check]:
    """The model-level checks, run once per evaluation on a few images."""
    return {"randomised_model": check_randomised(model, x), "logits_not_softmax": check_softmax_output(model, x),
            "zero_gradients": check_zero_gradients(model, x, labels)}


def merge_checks(*groups: dict[str, Check]) -> dict[str, Check]:
    """Combine check dicts; a check failed in any group stays failed."""
    out: dict[str, Check] = {}
    for group in groups:
        for name, check in group.items():
            if name not in out or not check["ok"]:
                out[name] = check
    return out
