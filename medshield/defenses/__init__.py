"""Defenses: training-time hooks (AT, ANT, noise) and inference-time model wrappers."""
