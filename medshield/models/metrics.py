"""Clinical classification metrics with bootstrap 95% confidence intervals.

Sensitivity and specificity refer to the dataset's ``positive_class`` (the disease) for binary
tasks, and are macro-averaged one-vs-rest for multi-class tasks. AUC is ROC AUC (macro OvR).
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney rank statistic (ties count half); NaN with one class only."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy and scikit-learn take a second to import: only when scoring

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def point_metrics(labels: np.ndarray, probs: np.ndarray, positive_class: int | None) -> dict[str, float]:
    """Accuracy, sensitivity, specificity and AUC from labels ``[N]`` and probabilities ``[N, K]``."""
    preds = probs.argmax(axis=1)
    k = probs.shape[1]
    out = {"accuracy": float((preds == labels).mean()) if labels.size else float("nan")}
    if k == 2:
        pos = 1 if positive_class is None else positive_class
        is_pos = labels == pos
        pred_pos = preds == pos
        out["sensitivity"] = _ratio((pred_pos & is_pos).sum(), is_pos.sum())
        out["specificity"] = _ratio((~pred_pos & ~is_pos).sum(), (~is_pos).sum())
        out["auc"] = binary_auc(probs[:, pos], is_pos)
        return out
    sens, spec = [], []
    for c in range(k):
        is_c, pred_c = labels == c, preds == c
        sens.append(_ratio((pred_c & is_c).sum(), is_c.sum()))
        spec.append(_ratio((~pred_c & ~is_c).sum(), (~is_c).sum()))
    out["sensitivity"], out["specificity"] = float(np.nanmean(sens)), float(np.nanmean(spec))
    present = np.unique(labels)
    from sklearn.metrics import roc_auc_score

    try:
        out["auc"] = float(roc_auc_score(labels, probs[:, present] / probs[:, present].sum(1, keepdims=True),
                                         multi_class="ovr", labels=present)) if present.size > 1 else float("nan")
    except ValueError:
        out["auc"] = float("nan")
    return out


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else float("nan")


def classification_metrics(
    labels: torch.Tensor | np.ndarray,
    probs: torch.Tensor | np.ndarray,
    positive_class: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Point metrics, confusion matrix and percentile-bootstrap 95% CIs (``ci: {metric: [lo, hi]}``)."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    out: dict[str, object] = dict(point_metrics(y, p, positive_class))
    out["n"] = int(y.size)
    out["positive_class"] = positive_class if p.shape[1] == 2 else None
    out["confusion_matrix"] = confusion_matrix(y, p.argmax(1), p.shape[1]).tolist()
    if n_bootstrap > 0 and y.size > 1:
        out["ci"] = bootstrap_ci(y, p, positive_class, n_bootstrap, seed)
    return out


def bootstrap_ci(y: np.ndarray, p: np.ndarray, positive_class: int | None, n: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in METRICS}
    for _ in range(n):
        idx = rng.integers(0, y.size, y.size)
        for m, v in point_metrics(y[idx], p[idx], positive_class).items():
            samples[m].append(v)
    return {m: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for m, v in samples.items()}


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


# ---- multi-label (one sigmoid per finding) ----

FINDING_METRICS = ("auc", "sensitivity", "specificity", "accuracy")


def finding_point_metrics(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """One finding: AUC of ``scores`` and sensitivity/specificity/accuracy of ``scores >= threshold``."""
    pred = scores >= threshold
    return {"auc": binary_auc(scores, positive),
            "sensitivity": _ratio((pred & positive).sum(), positive.sum()),
            "specificity": _ratio((~pred & ~positive).sum(), (~positive).sum()),
            "accuracy": float((pred == positive).mean()) if positive.size else float("nan")}


def multilabel_metrics(
    labels: torch.Tensor | np.ndarray,
    probs: torch.Tensor | np.ndarray,
    names: list[str],
    thresholds: list[float] | float = 0.5,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Per-finding clinical metrics of a multi-label classifier, with percentile-bootstrap 95% CIs.

    ``labels`` ``[N, K]`` 0/1 and ``probs`` ``[N, K]`` sigmoid probabilities; each finding is decided
    at its threshold (the card's ``output.thresholds``). Returns ``{"n", "findings": {name: {"auc",
    "sensitivity", "specificity", "accuracy", "threshold", "prevalence", "ci": {metric: [lo, hi]}}},
    "macro": {metric: mean over findings}, "exact_match"}`` (exact match: every finding right).
    The bootstrap resamples images (rows), so the CIs keep the findings' correlation.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.shape != y.shape or y.shape[1] != len(names):
        raise ValueError(f"labels and probs must both be [N, {len(names)}], got {y.shape} and {p.shape}")
    t = np.full(len(names), float(thresholds)) if np.isscalar(thresholds) else np.asarray(thresholds, dtype=np.float64)
    findings: dict[str, dict[str, object]] = {}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, y.shape[0], y.shape[0]) for _ in range(n_bootstrap if y.shape[0] > 1 else 0)]
    for k, name in enumerate(names):
        point: dict[str, object] = dict(finding_point_metrics(y[:, k], p[:, k], t[k]))
        point.update(threshold=float(t[k]), prevalence=float(y[:, k].mean()) if y.size else float("nan"))
        if draws:
            samples = [finding_point_metrics(y[idx, k], p[idx, k], t[k]) for idx in draws]
            point["ci"] = {m: [float(np.nanpercentile([s[m] for s in samples], 2.5)),
                               float(np.nanpercentile([s[m] for s in samples], 97.5))] for m in FINDING_METRICS}
        findings[name] = point
    macro = {m: float(np.nanmean([float(f[m]) for f in findings.values()])) for m in FINDING_METRICS}  # type: ignore[arg-type]
    exact = float(((p >= t) == y).all(1).mean()) if y.size else float("nan")
    return {"n": int(y.shape[0]), "findings": findings, "macro": macro, "exact_match": exact}
