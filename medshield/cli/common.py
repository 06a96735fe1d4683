"""What every ``medshield`` command module shares: the option vocabulary, one-line user errors, JSON
output, and :class:`CommandGroup` (a module's commands under one help panel).

The vocabulary: ``--run`` (a run folder, or several comma-separated), ``--target`` (target cards, or a
live service's URL for ``blackbox``), ``--out``, ``--dataset``, ``--data-dir``, ``--n-images`` (how
many images), ``--attacks`` / ``--attack`` (a list / one attack), ``--eps`` (``2/255`` or a comma
list), ``--budgets`` / ``--budget`` (query budgets per image: a list / one), ``--defenses`` /
``--defense`` (inference-defense specs such as ``rnd:nu=0.04``: a list / one), ``--training-defense``
(at, ant, noise), ``--key-budget`` (a served key's query quota), ``--norm``, ``--split``, ``--seed``,
``--device``. Older names stay as hidden aliases for a release (:func:`alias`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medshield.errors import MedShieldError, removed_on_user_error
from medshield.evaluation.calibration import CalibrationConfig, Tolerance

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

MaxCleanDrop = Annotated[float, typer.Option("--max-clean-drop", help="Calibration tolerance for rnd/dnd given without "
                                             "parameters: largest accepted drop in clean accuracy and in sensitivity "
                                             "on the validation split (0.01 = 1 point).")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data root (default $MEDSHIELD_DATA).")]
Dataset = Annotated[str, typer.Option("--dataset", help="demo, pneumoniamnist, breastmnist, chest_xray, ...")]
RunDataset = Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (runs are reproducible).")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")]
Out = Annotated[Path, typer.Option("--out", help="Output folder (rerun to resume).")]
Split = Annotated[str, typer.Option("--split", help="train, val or test.")]
NImages = Annotated[int | None, typer.Option("--n-images", help="Images drawn with --seed (default: all).")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Target card YAML (see `medshield target check`); "
                                               "comma-separated for several.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Recompute jobs whose stored results came from other "
                                                            "inputs (model, data, parameters).")]
FailOn = Annotated[str | None, typer.Option("--fail-on", metavar="high|medium|low",
                                            help="For CI: exit with status 3 when a finding at or above this "
                                                 "severity exists (see docs/audit.md for the rules).")]

USER_ERRORS = (MedShieldError, ValueError, FileNotFoundError, PermissionError)
OUTPUT_OPTIONS = ("out",)  # parameters naming a folder the command creates: removed again if it fails


def user_errors(func: F) -> F:
    """Turn user errors into one line on stderr and exit code 2 (``MEDSHIELD_DEBUG=1`` shows tracebacks)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outputs = [v for k, v in kwargs.items() if k in OUTPUT_OPTIONS and isinstance(v, Path)]
        try:
            with removed_on_user_error(outputs, USER_ERRORS):
                return func(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("MEDSHIELD_DEBUG"):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def calibration_config(max_clean_drop: float, seed: int) -> CalibrationConfig:
    """The calibration settings from the CLI options (one tolerance for accuracy and sensitivity)."""
    return CalibrationConfig(tolerance=Tolerance.of(max_clean_drop), seed=seed)


def fail_if(bad: list[Any], message: Callable[[], str]) -> None:
    """``--fail-on``: when ``bad`` holds anything, print ``message()`` to stderr and exit with status 3."""
    if bad:
        typer.echo(message(), err=True)
        raise typer.Exit(3)


def check_level(level: str | None) -> None:
    if level is not None and level not in ("high", "medium", "low"):
        raise MedShieldError(f"--fail-on must be high, medium or low, got {level!r}")


def emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "sensitivity", "specificity", "auc") if k in metrics}


def alias(value: T, old: T | None, default: T | None = None) -> T:
    """The option's value, or the value given under its old (hidden) name when only that was given."""
    return old if old is not None and value == default else value


def refs(run: str | Path | None, target: str | None, what: str = "--run RUN or --target CARD") -> str:
    """``--run`` and ``--target`` together as one comma-separated list of model references."""
    items = [v for v in (run, target) if v]
    if not items:
        raise MedShieldError(f"give the model to test: {what}")
    return ",".join(str(v) for v in items)


class CommandGroup:
    """The commands of one CLI module, shown under one help panel; :meth:`register` adds them to the app."""

    def __init__(self, panel: str) -> None:
        self.panel = panel
        self._commands: list[tuple[str | None, Callable[..., Any]]] = []
        self._typers: list[tuple[typer.Typer, str]] = []

    def command(self, name: str | None = None) -> Callable[[F], F]:
        def deco(func: F) -> F:
            self._commands.append((name, func))
            return func

        return deco

    def add_typer(self, sub: typer.Typer, name: str) -> None:
        self._typers.append((sub, name))

    def register(self, app: typer.Typer) -> None:
        for name, func in self._commands:
            app.command(name, rich_help_panel=self.panel)(func)
        for sub, name in self._typers:
            app.add_typer(sub, name=name, rich_help_panel=self.panel)
