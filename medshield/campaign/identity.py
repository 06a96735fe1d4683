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
from medshield.evaluation.identity import data_files_digest, model_fingerprint, run_fingerprint
from medshield.evaluation.store import RECORD_FORMAT, file_digest
from medshield.models.checkpoint import CONFIG_FILE, read_json

RUN_ARGS = ("run", "source", "base_run")
RUN_LIST_ARGS = ("targets",)
EXECUTION_ARGS = ("device",)

__all__ = ["job_inputs", "run_fingerprint", "with_identity"]


def _data_files(kwargs: dict[str, Any]) -> str | None:
    """The digest of the data files a job reads: its ``dataset`` under ``data_dir``, or where it names
    none, the dataset (and MedMNIST size) its run was trained on."""
    name, size = kwargs.get("dataset"), None
    run = kwargs.get("run") or kwargs.get("source") or kwargs.get("base_run")
    if run is not None and (Path(run) / CONFIG_FILE).is_file():
        data = read_json(Path(run) / CONFIG_FILE).get("data", {})
        name, size = name or data.get("dataset"), data.get("size")
    if not isinstance(name, str) or name.lower().endswith(".csv"):
        return None  # a manifest is digested on its own; a card's data comes with the card
    return data_files_digest(name, kwargs.get("data_dir"), size)  # the size picks a MedMNIST file only


def job_inputs(fn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job's identity: its function, record-format version and arguments, runs fingerprinted, and
    the bytes of the data files it reads (a file replaced under the same name is other data)."""
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
    if "data_dir" in kwargs:
        args["data_files"] = _data_files(kwargs)
    return {"format": RECORD_FORMAT, "fn": fn.rpartition(":")[2], "args": args}


def with_identity(jobs: list[Job]) -> list[Job]:
    """The jobs with their ``inputs`` filled in."""
    return [Job(j.key, j.fn, j.kwargs, job_inputs(j.fn, j.kwargs)) for j in jobs]
