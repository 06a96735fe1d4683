"""A campaign job's identity: everything that determines its result, so a changed input recomputes.

Run folders in a job's arguments are replaced by what makes them that model (folder name, SHA-256 of
the weights file and of ``config.json``), so auditing another model that happens to live in a folder
of the same name never reuses the old model's records. Where the work runs (device, threads) is not
part of the identity: it does not change what a job computes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from medshield.evaluation.executor import Job
from medshield.evaluation.store import RECORD_FORMAT, file_digest, identity_hash
from medshield.models.checkpoint import CONFIG_FILE, MODEL_FILE, read_json

RUN_ARGS = ("run", "source", "base_run")
RUN_LIST_ARGS = ("targets",)
EXECUTION_ARGS = ("device",)


@lru_cache(maxsize=64)
def _run_fingerprint(run: str, size: int, mtime_ns: int) -> tuple[str, str]:
    config = read_json(Path(run) / CONFIG_FILE)
    return file_digest(Path(run) / MODEL_FILE), identity_hash(config)


def run_fingerprint(run: str | Path) -> dict[str, str]:
    """``{"name", "weights", "config"}`` of a run folder (digests cached per file size and mtime)."""
    weights = Path(run) / MODEL_FILE
    stat = weights.stat() if weights.is_file() else None
    digest, config = _run_fingerprint(str(run), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
    return {"name": Path(run).name, "weights": digest, "config": config}


def job_inputs(fn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job's identity: its function, record-format version and arguments, runs fingerprinted."""
    args: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in EXECUTION_ARGS:
            continue
        if name in RUN_ARGS and value is not None:
            value = run_fingerprint(value)
        elif name in RUN_LIST_ARGS:
            value = [run_fingerprint(v) for v in value]
        args[name] = value
    return {"format": RECORD_FORMAT, "fn": fn.rpartition(":")[2], "args": args}


def with_identity(jobs: list[Job]) -> list[Job]:
    """The jobs with their ``inputs`` filled in."""
    return [Job(j.key, j.fn, j.kwargs, job_inputs(j.fn, j.kwargs)) for j in jobs]
