"""A campaign job's identity: everything that determines its result, so a changed input recomputes.

Run folders and target cards in a job's arguments are replaced by what makes them that model (see
:func:`medshield.evaluation.identity.model_fingerprint`: a run's folder name and SHA-256 of its
weights and ``config.json``; a card's content digest and its model files' digest), so auditing
another model that happens to live in a folder of the same name never reuses the old model's
records. Where the work runs (device, threads) is not part of the identity: it does not change what a
job computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medshield.evaluation.executor import Job
from medshield.evaluation.identity import model_fingerprint, run_fingerprint
from medshield.evaluation.store import RECORD_FORMAT, file_digest

RUN_ARGS = ("run", "source", "base_run")
RUN_LIST_ARGS = ("targets",)
EXECUTION_ARGS = ("device",)

__all__ = ["job_inputs", "run_fingerprint", "with_identity"]


def job_inputs(fn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job's identity: its function, record-format version and arguments, runs fingerprinted."""
    args: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in EXECUTION_ARGS:
            continue
        if name == "dataset" and isinstance(value, str) and value.lower().endswith(".csv") and Path(value).is_file():
            value = {"manifest": value, "sha256": file_digest(value)}  # a manifest edited in place is other data
        elif name in RUN_ARGS and value is not None:
            value = model_fingerprint(value)
        elif name in RUN_LIST_ARGS:
            value = [model_fingerprint(v) for v in value]
        args[name] = value
    return {"format": RECORD_FORMAT, "fn": fn.rpartition(":")[2], "args": args}


def with_identity(jobs: list[Job]) -> list[Job]:
    """The jobs with their ``inputs`` filled in."""
    return [Job(j.key, j.fn, j.kwargs, job_inputs(j.fn, j.kwargs)) for j in jobs]
