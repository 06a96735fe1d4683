from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medshield.evaluation.metrics import binary_auc, classification_metrics


def test_binary_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0])
    p1 = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), positive_class=1, n_bootstrap=200)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]


def test_positive_class_zero_swaps_sensitivity() -> None:
    y = np.array([0, 0, 1, 1])
    p0 = np.array([0.9, 0.4, 0.2, 0.3])
    probs = np.stack([p0, 1 - p0], 1)
    m = classification_metrics(y, probs, positive_class=0, n_bootstrap=0)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(1.0)
    assert m["auc"] == pytest.approx(roc_auc_score(y == 0, p0))


def test_bootstrap_ci_contains_point_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.6 + rng.random(300) * 0.5, 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    a = classification_metrics(y, probs, 1, n_bootstrap=300, seed=1)
    b = classification_metrics(y, probs, 1, n_bootstrap=300, seed=1)
    assert a["ci"] == b["ci"]
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        lo, hi = a["ci"][key]
        assert lo <= a[key] <= hi and hi - lo < 0.2


def test_multiclass_and_auc_ties() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, n_bootstrap=0)
    assert m["accuracy"] == pytest.approx(0.75) and 0 < m["auc"] <= 1
    assert binary_auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
