"""MedShield: security testing of medical-image deep learning systems."""

__version__ = "0.1.0"

from medshield.types import AttackResult, Norm  # noqa: E402

__all__ = ["AttackResult", "Norm", "__version__"]
