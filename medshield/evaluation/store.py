"""Resumable record stores: finished jobs are kept on disk, so an interrupted run continues."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medshield.models.checkpoint import write_json
from medshield.types import to_jsonable


class RecordStore:
    """Records keyed by job id, persisted atomically to one JSON file after every ``put``.

    ``get_or_run(key, fn)`` returns the stored record or runs ``fn`` and stores its result, so a
    re-run after a crash skips finished work. ``records()`` keeps insertion order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        if self.path.is_file():
            self._data = json.loads(self.path.read_text()).get("jobs", {})

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def put(self, key: str, record: Any) -> None:
        self._data[key] = to_jsonable(record)
        write_json(self.path, {"jobs": self._data})

    def get_or_run(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._data:
            self.put(key, fn())
        return self._data[key]

    def records(self) -> list[Any]:
        return list(self._data.values())
