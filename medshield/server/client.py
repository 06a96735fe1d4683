"""The Python client of a MedShield server. It lives in :mod:`medshield.targets.medshield_api` (a served
MedShield model is one kind of target); this module keeps the old import path working."""

from medshield.targets.medshield_api import (
    KEY_HEADER, AuthenticationError, Forbidden, RateLimited, RemoteClassifier, RemoteError,
)

__all__ = ["KEY_HEADER", "AuthenticationError", "Forbidden", "RateLimited", "RemoteClassifier", "RemoteError"]
