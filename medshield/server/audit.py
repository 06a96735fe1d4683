"""A JSON-lines audit log: one line per request, naming the key by its id (never the key itself)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO


class AuditLog:
    """Appends ``{"ts", "key_id", "path", "status", "n", ...}`` lines; thread-safe; flushed per line."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        if self._file is None:
            return
        line = json.dumps({"ts": round(time.time(), 6), **record}, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """All records of an audit log (for tests and reports)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
