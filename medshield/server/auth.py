"""API keys held only as SHA-256 hashes; a key's public id (hash prefix) names it in logs and limits."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from medshield.errors import MedShieldError
from medshield.types import split_list

ENV_VAR = "MEDSHIELD_API_KEYS"
MIN_KEY_LENGTH = 16


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """The set of accepted keys, stored as hashes. ``identify(key)`` -> the key's id, or ``None``."""

    def __init__(self, keys: Iterable[str]) -> None:
        hashes: dict[str, str] = {}
        for key in keys:
            key = key.strip()
            if not key:
                continue
            if len(key) < MIN_KEY_LENGTH:
                raise MedShieldError(f"API keys must be at least {MIN_KEY_LENGTH} characters (got one of {len(key)})")
            digest = hash_key(key)
            hashes[digest] = digest[:12]
        if not hashes:
            raise MedShieldError(f"no API keys configured; pass --api-keys FILE (one per line) or set {ENV_VAR}")
        self._hashes = hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def identify(self, key: str | None) -> str | None:
        """The id of ``key`` if it is accepted (constant-time comparison over all stored hashes)."""
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for stored, key_id in self._hashes.items():
            if hmac.compare_digest(stored, digest):
                found = key_id
        return found

    @classmethod
    def from_sources(cls, path: str | Path | None = None, env: str | None = None) -> KeyStore:
        """Keys from a file (one per line, ``#`` comments) and/or ``$MEDSHIELD_API_KEYS`` (comma-separated)."""
        keys: list[str] = []
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise MedShieldError(f"API key file {path} not found")
            lines = path.read_text(encoding="utf-8").splitlines()
            keys += [ln for ln in (s.strip() for s in lines) if ln and not ln.startswith("#")]
        env_value = os.environ.get(ENV_VAR, "") if env is None else env
        keys += split_list(env_value)
        return cls(keys)
