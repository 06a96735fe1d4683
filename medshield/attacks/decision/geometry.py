"""Moved: the Lp geometry is :mod:`medshield.attacks.geometry` (one module for every attack) and the
oracle-driven searches are :mod:`medshield.attacks.decision.search`. Names re-exported for one release."""

from medshield.attacks.decision.search import binary_search, noise_start, other_image_start, start_points
from medshield.attacks.geometry import blend, distance, expand, flat_norm, rowdot, unit

random_start = noise_start

__all__ = ["binary_search", "blend", "distance", "expand", "flat_norm", "noise_start", "other_image_start",
           "random_start", "rowdot", "start_points", "unit"]
