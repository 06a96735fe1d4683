"""Clinical classification metrics: they live in :mod:`medshield.models.metrics` (training selects
checkpoints by them, and models sit below evaluation); re-exported here for existing imports."""

from medshield.models.metrics import (FINDING_METRICS, METRICS, binary_auc, bootstrap_ci, classification_metrics,
                                      confusion_matrix, finding_point_metrics, multilabel_metrics, point_metrics)

__all__ = ["FINDING_METRICS", "METRICS", "binary_auc", "bootstrap_ci", "classification_metrics", "confusion_matrix",
           "finding_point_metrics", "multilabel_metrics", "point_metrics"]
