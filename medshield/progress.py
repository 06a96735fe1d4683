"""Progress bars for long work (rich), shown only on an interactive terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Advance(Protocol):
    def __call__(self, advance: float = 1, **fields: Any) -> None: ...


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("MEDSHIELD_NO_PROGRESS")


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool | None = None) -> Iterator[Advance]:
    """``with progress_bar("PGD", total=n) as advance: advance(1, info="acc 0.12")``."""
    if not (progress_enabled() if enabled is None else enabled):
        yield lambda advance=1, **fields: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(advance: float = 1, **fields: Any) -> None:
            bar.update(task, advance=advance, **fields)

        yield advance
