"""Resumable record stores: finished jobs are kept on disk, so an interrupted run continues.

A record's identity is its inputs: each stored record may carry the inputs that determined it (model
weights' digest, data, image indices, attack parameters, eps, budgets, seed, record-format version).
A stored record is reused only when its inputs equal the job's; a record from different inputs is
either refused with a one-line message naming the difference, or (``overwrite=True``) recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medshield.errors import MedShieldError
from medshield.models.checkpoint import write_json
from medshield.types import to_jsonable

RECORD_FORMAT = 2  # bump when a job's record layout changes: old records are then never reused


class StaleRecordError(MedShieldError):
    """A folder holds records computed from other inputs than the ones asked for now."""


def identity_hash(inputs: Any) -> str:
    """SHA-256 of the canonical JSON of ``inputs`` (sorted keys, no whitespace)."""
    text = json.dumps(to_jsonable(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (``"absent"`` when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return "absent"
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 40) -> str:
    text = "absent" if value is _MISSING else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


_MISSING = object()


def describe_difference(old: Any, new: Any, limit: int = 3) -> str:
    """``"eps [0.0078] -> [0.031], seed 0 -> 1"``: the first ``limit`` fields that differ."""
    if old is None:
        return "stored without its inputs (written by an older MedShield)"
    a, b = _flatten(to_jsonable(old)), _flatten(to_jsonable(new))
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, _MISSING) != b.get(k, _MISSING)]
    parts = [f"{k} {_short(a.get(k, _MISSING))} -> {_short(b.get(k, _MISSING))}" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(parts) + more if parts else "same inputs"


class RecordStore:
    """Records keyed by job id, persisted atomically to one JSON file after every ``put``.

    ``get_or_run(key, fn, inputs)`` returns the stored record when it was computed from the same
    ``inputs``, or runs ``fn`` and stores its result, so a re-run after a crash skips finished work.
    A record stored under ``key`` from other inputs raises :class:`StaleRecordError` naming the
    difference, unless the store was opened with ``overwrite=True`` (then it is recomputed).
    ``records()`` keeps insertion order.
    """

    def __init__(self, path: str | Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._data: dict[str, Any] = {}
        self._inputs: dict[str, Any] = {}
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except ValueError as exc:
                raise MedShieldError(f"{self.path} is not valid JSON ({exc}); move it away or pass --overwrite") \
                    from None
            if not isinstance(stored, dict) or not isinstance(stored.get("jobs", {}), dict):
                raise MedShieldError(f"{self.path} is not a MedShield job store")
            self._data = stored.get("jobs", {})
            self._inputs = stored.get("inputs", {}) or {}

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def inputs(self, key: str) -> Any:
        return self._inputs.get(key)

    def current(self, key: str, inputs: Any = None) -> bool:
        """Whether ``key`` holds a record computed from ``inputs`` (``None``: any record will do)."""
        if key not in self._data:
            return False
        return inputs is None or self._inputs.get(key) == to_jsonable(inputs)

    def check(self, items: Iterable[tuple[str, Any]]) -> list[str]:
        """Keys whose stored record came from other inputs. Raises :class:`StaleRecordError` naming the
        first difference unless ``overwrite``; with ``overwrite`` returns them (they will be recomputed)."""
        stale = [(k, i) for k, i in items if i is not None and k in self._data and not self.current(k, i)]
        if stale and not self.overwrite:
            key, inputs = stale[0]
            also = f" and {len(stale) - 1} more job(s)" if len(stale) > 1 else ""
            raise StaleRecordError(
                f"{self.path} holds results of a different configuration ({key}: "
                f"{describe_difference(self._inputs.get(key), inputs)}{also}); "
                "use another output folder or pass --overwrite to recompute them")
        return [k for k, _ in stale]

    def put(self, key: str, record: Any, inputs: Any = None) -> None:
        self._data[key] = to_jsonable(record)
        if inputs is not None:
            self._inputs[key] = to_jsonable(inputs)
        else:
            self._inputs.pop(key, None)
        payload: dict[str, Any] = {"jobs": self._data}
        if self._inputs:
            payload["inputs"] = self._inputs
        write_json(self.path, payload)

    def get_or_run(self, key: str, fn: Callable[[], Any], inputs: Any = None) -> Any:
        if inputs is not None:
            self.check([(key, inputs)])
        if not self.current(key, inputs):
            self.put(key, fn(), inputs)
        return self._data[key]

    def records(self) -> list[Any]:
        return list(self._data.values())
