"""The ``medshield`` command line: one module per group of commands (data and models, white-box,
black-box, defenses, serving, audit and reproduce, target cards), each parsing its options into typed
values at the edge (eps as floats, budgets as ints, :class:`~medshield.defenses.inference.DefenseSpec`)
and calling :mod:`medshield.api` (``serve``: :mod:`medshield.server.service`); no logic here.

The console entry point is ``medshield = "medshield.cli:main"``; ``python -m medshield.cli`` works too.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from medshield.cli import audit, blackbox, data_models, defenses, serve, targets, whitebox

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MedShield: security testing of medical-image classifiers.")
for _module in (data_models, whitebox, blackbox, defenses, serve, audit, targets):
    _module.group.register(app)


def main() -> None:
    logging.basicConfig(level=os.environ.get("MEDSHIELD_LOG", "INFO"), format="%(message)s", stream=sys.stderr)
    app()


__all__ = ["app", "main"]
