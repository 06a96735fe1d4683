"""Progress for long work: a rich bar on an interactive terminal, plain timestamped lines otherwise.

When stderr is not a terminal (``nohup``, CI, a job scheduler, a pipe), progress is written as lines
such as ``2026-11-29 14:40:01 white-box pgd: 120/500 (24%), 1m10s elapsed, ETA 3m42s``, at most one
every ``MEDSHIELD_PROGRESS_INTERVAL`` seconds (default 10) plus a final line, so logs show that work
is moving without flooding. ``MEDSHIELD_NO_PROGRESS=1`` silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ENV_DISABLE = "MEDSHIELD_NO_PROGRESS"
ENV_INTERVAL = "MEDSHIELD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


class Advance(Protocol):
    def __call__(self, advance: float = 1, **fields: Any) -> None: ...


def progress_enabled() -> bool:
    """Progress is on unless ``MEDSHIELD_NO_PROGRESS`` is set (terminal or not)."""
    return not os.environ.get(ENV_DISABLE)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``3m42s``, ``1h02m``, ``12s``."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class LineProgress:
    """Rate-limited plain progress lines with done/total, elapsed time and an ETA."""

    def __init__(self, description: str, total: float | None, stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total = description, total
        self.stream = stream or sys.stderr
        self.interval = _interval() if interval is None else interval
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0.0
        self.info = ""
        self.lines = 0
        self.emitted_at: float | None = None  # ``done`` when the last line was written

    def __call__(self, advance: float = 1, **fields: Any) -> None:
        self.done += advance
        if "info" in fields:
            self.info = str(fields["info"])
        if self.clock() - self.last >= self.interval:
            self.emit()

    def line(self) -> str:
        elapsed = self.clock() - self.start
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        done = f"{self.done:g}"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else None
            done = f"{done}/{self.total:g} ({100 * frac:.0f}%)"
            tail = f", ETA {format_duration(eta)}" if eta is not None else ""
        else:
            tail = ""
        info = f" [{self.info}]" if self.info else ""
        return f"{stamp} {self.description}: {done}, {format_duration(elapsed)} elapsed{tail}{info}"

    def emit(self) -> None:
        self.last = self.clock()
        self.lines += 1
        self.emitted_at = self.done
        print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        """The final line, unless the last line already showed the same count."""
        if self.emitted_at != self.done:
            self.emit()


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool | None = None) -> Iterator[Advance]:
    """``with progress_bar("PGD", total=n) as advance: advance(1, info="acc 0.12")``.

    A rich bar on a terminal; plain lines (every ``MEDSHIELD_PROGRESS_INTERVAL`` s and at the end)
    when stderr is redirected.
    """
    if not (progress_enabled() if enabled is None else enabled):
        yield lambda advance=1, **fields: None
        return
    if not sys.stderr.isatty():
        lines = LineProgress(description, total)
        yield lines
        lines.finish()
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(advance: float = 1, **fields: Any) -> None:
            bar.update(task, advance=advance, **fields)

        yield advance
