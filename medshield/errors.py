"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


class MedShieldError(Exception):
    """An error caused by user input (a path, a name, a file) with a message that says how to fix it."""


class DataError(MedShieldError):
    """A dataset is missing, corrupt or has the wrong shape."""


class CheckpointError(MedShieldError):
    """A checkpoint is missing, unsafe (pickle) or inconsistent."""


class BudgetExceeded(MedShieldError):
    """A query budget or rate limit was exhausted."""


class SpecError(MedShieldError, ValueError):
    """Text from the command line, a YAML config or an HTTP request that does not parse into a typed
    value (an eps, a budget, a defense spec); also a ``ValueError``."""


def new_ancestor(path: Path) -> Path | None:
    """The topmost folder of ``path`` (itself included) that does not exist yet, or None."""
    path = Path(path).absolute()
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    return top


@contextlib.contextmanager
def removed_on_user_error(paths: Iterable[Path], errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A command that fails with a user error leaves no new files or folders behind: the output folders
    it created (and the parents it created for them) are removed. Folders that existed are kept, and so
    is everything after an interruption or crash (Ctrl-C, SIGKILL), which a rerun resumes."""
    created = [p for p in (new_ancestor(p) for p in paths) if p is not None]
    try:
        yield
    except errors:
        for top in created:
            if top.is_dir():
                shutil.rmtree(top, ignore_errors=True)
            elif top.exists():
                top.unlink()
        raise
