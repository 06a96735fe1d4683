"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class MedShieldError(Exception):
    """An error caused by user input (a path, a name, a file) with a message that says how to fix it."""


class DataError(MedShieldError):
    """A dataset is missing, corrupt or has the wrong shape."""


class CheckpointError(MedShieldError):
    """A checkpoint is missing, unsafe (pickle) or inconsistent."""


class BudgetExceeded(MedShieldError):
    """A query budget or rate limit was exhausted."""
