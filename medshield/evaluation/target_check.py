"""``medshield target check``: load a card, run images through it, report what was found.

One JSON-able dict: the target's description, input and output shapes, the value range of its raw
outputs and of its logits, clean metrics on the given split (``test.accuracy``), whether gradients
are available (and non-zero), whether two passes over the same input agree, and for a converted
ONNX model how far the PyTorch conversion is from ONNX Runtime on the data.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from medshield.data import Dataset
from medshield.evaluation.checks import check_softmax_output, check_zero_gradients
from medshield.models.metrics import classification_metrics, multilabel_metrics as finding_metrics
from medshield.models import predict, probabilities
from medshield.models.bounded import eval_mode
from medshield.targets import Target

HEADLINE = ("accuracy", "sensitivity", "specificity", "auc")


@torch.no_grad()
def raw_outputs(target: Target, x: torch.Tensor) -> torch.Tensor | None:
    """The model's own outputs (before MedShield turns probabilities into logits), where they can be reached."""
    model = target.model
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential) or not hasattr(model, "mean"):
        return None
    with eval_mode(model):
        z = (x.to(model.mean.device) - model.mean) / model.std
        return net[0](z).float().cpu()


def multilabel_metrics(target: Target, labels: torch.Tensor, logits: torch.Tensor) -> dict[str, Any]:
    """Exact-match ``accuracy`` (every finding right), per-finding accuracy, and per finding AUC,
    sensitivity and specificity at the card's thresholds with bootstrap CIs (``findings``, ``macro``)."""
    m = finding_metrics(labels, torch.sigmoid(logits), target.class_names, target.card.output.threshold_list())
    per = {name: f["accuracy"] for name, f in m["findings"].items()}  # type: ignore[index]
    return {"accuracy": m["exact_match"], "per_finding_accuracy": per, "findings": m["findings"], "macro": m["macro"]}


def check_target(target: Target, ds: Dataset, split: str = "test", n: int | None = None,
                 n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Shapes, output ranges, clean metrics on ``split`` (first ``n`` images, or all), gradients and determinism."""
    start = time.perf_counter()
    part = ds.split(split)
    count = len(part) if n is None else min(n, len(part))
    x, y = part.get(slice(0, count))
    logits = predict(target.model, x)
    raw = raw_outputs(target, x)
    probe = x[: min(16, count)].to(target.device)
    out: dict[str, Any] = {
        "target": target.describe(),
        "data": {"dataset": ds.name, "split": split, "n": count, "classes": ds.class_names,
                 "positive_class": ds.positive_class},
        "input_shape": list(x.shape[1:]),
        "output_shape": list(logits.shape),
        "outputs": _range(raw if raw is not None else logits) | {"kind": target.card.output.kind},
        "logits": _range(logits),
    }
    if target.task == "multilabel":
        out[split] = multilabel_metrics(target, y, logits)
    else:
        metrics = classification_metrics(y, probabilities(logits), ds.positive_class, n_bootstrap=n_bootstrap, seed=seed)
        out[split] = {**{k: metrics[k] for k in HEADLINE if k in metrics}, "ci": metrics.get("ci")}
    out["gradients"] = target.gradients
    checks: dict[str, Any] = {}
    if target.card.output.kind == "logits" and target.task != "multilabel":
        checks["logits_not_softmax"] = check_softmax_output(target.model, probe)
    if raw is not None and target.card.output.kind == "probabilities":
        ok = bool(raw.min() >= 0 and raw.max() <= 1)
        checks["probabilities_in_0_1"] = {"ok": ok, "detail": f"raw outputs in [{float(raw.min()):.4g}, {float(raw.max()):.4g}]"}
    if target.white_box is not None and target.task != "multilabel":
        checks["zero_gradients"] = check_zero_gradients(target.white_box, probe, y[: probe.shape[0]])
        if target.white_box is not target.model:
            wb = predict(target.white_box, x)
            out["white_box_vs_predictions"] = {
                "max_abs_logit_diff": float((wb - logits).abs().max()) if count else 0.0,
                "same_label": float((wb.argmax(1) == logits.argmax(1)).double().mean()) if count else 1.0}
    out["deterministic"] = target.is_deterministic(probe[:4])
    out["checks"] = checks
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def _range(t: torch.Tensor) -> dict[str, float]:
    if t.numel() == 0:
        return {"min": float("nan"), "max": float("nan")}
    return {"min": float(t.min()), "max": float(t.max())}
