"""Evaluation: metrics, runners that produce JSON records, sanity checks."""

from medshield.models.metrics import classification_metrics, point_metrics

__all__ = ["classification_metrics", "point_metrics"]
