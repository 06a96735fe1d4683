"""A job's identity: everything that determines its result (issue 19), shared by every command.

``model`` is what makes a target that model: a run folder's name with the SHA-256 of its weights and
of its ``config.json``; a card's name, format, content digest and the digest of the files it names
(so two cards that read alike but point at different weights differ); a loaded :class:`Target`'s
model and card digests. ``data`` is the dataset, split and a digest of the very pixels and labels a
job attacks (so another data folder, size, manifest or image selection differs). Job stores keep
these inputs beside each record and reuse a record only when they are equal (see
:class:`medshield.evaluation.store.RecordStore`). Where the work runs (device, threads, HTTP batch
size) is not part of the identity. Campaign jobs also carry the digest of the data files a named
dataset is read from (:func:`data_files_digest`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from medshield.data import dataset_files
from medshield.evaluation.store import RECORD_FORMAT, file_digest, identity_hash
from medshield.models.checkpoint import CONFIG_FILE, MODEL_FILE, read_json
from medshield.targets import Target, load_card
from medshield.targets.card import TargetCard
from medshield.targets.source import file_digest as files_digest


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``tensors`` (CPU, contiguous)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=64)
def _run_fingerprint(run: str, size: int, mtime_ns: int, config_mtime_ns: int) -> tuple[str, str]:
    config = read_json(Path(run) / CONFIG_FILE)
    return file_digest(Path(run) / MODEL_FILE), identity_hash(config)


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else -1


def run_fingerprint(run: str | Path) -> dict[str, str]:
    """``{"name", "weights", "config"}`` of a run folder (digests cached per file size and mtime)."""
    weights = Path(run) / MODEL_FILE
    size = weights.stat().st_size if weights.is_file() else -1
    digest, config = _run_fingerprint(str(run), size, _mtime(weights), _mtime(Path(run) / CONFIG_FILE))
    return {"name": Path(run).name, "weights": digest, "config": config}


def card_files(card: TargetCard) -> list[Path]:
    """The files whose bytes make a card's model: ``model.path`` (a run folder: its weights and config;
    another folder: every file in it) and ``model.weights``; none for remote endpoints."""
    files: list[Path] = []
    for value in (card.model.path, card.model.weights):
        if not value:
            continue
        path = card.resolve(value)
        if card.model.format == "medshield_run" and path.is_dir():
            files += [path / MODEL_FILE, path / CONFIG_FILE]
        elif path.exists():
            files.append(path)
    return [f for f in files if f.exists()]


@lru_cache(maxsize=64)
def _card_fingerprint(card_path: str, stamps: tuple[tuple[str, int, int], ...]) -> dict[str, str]:
    card = load_card(card_path)
    files = card_files(card)
    return {"name": card.label, "format": card.model.format, "card": card.digest(),
            "model": files_digest(files) if files else "none (remote or built-in)"}


def _stamps(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]):
            st = f.stat()
            out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def model_fingerprint(ref: str | Path | Target) -> dict[str, str]:
    """What makes ``ref`` (a run folder, a card file or a loaded :class:`Target`) that model."""
    if isinstance(ref, Target):
        return {"name": ref.name, "format": ref.format, "card": ref.card.digest(), "model": ref.model_digest}
    path = Path(ref)
    if not path.is_file():
        return run_fingerprint(path)
    card = load_card(path)  # cached digests below are keyed by the card's and its files' sizes and mtimes
    return _card_fingerprint(str(path), _stamps([path, *card_files(card)]))


@lru_cache(maxsize=16)
def _files_digest(stamps: tuple[tuple[str, int, int], ...]) -> str:
    return files_digest([Path(name) for name, _, _ in stamps])


def data_files_digest(dataset: str, data_dir: str | Path | None, size: int | None = None) -> str | None:
    """SHA-256 of the bytes of the files a named dataset is read from (:func:`medshield.data.dataset_files`;
    cached per file size and mtime), so a data file replaced under the same name is other data; None
    where the dataset has no files (``demo``) or they are not there."""
    files = dataset_files(dataset, data_dir, size)
    return _files_digest(_stamps(files)) if files else None


def data_identity(dataset: str, split: str, x: torch.Tensor, y: torch.Tensor, **extra: Any) -> dict[str, Any]:
    """The data a job runs on: dataset name, split, how many images and a digest of their pixels and labels."""
    return {"dataset": dataset, "split": split, "n": int(x.shape[0]), "pixels": tensor_digest(x, y), **extra}


def job_identity(**parts: Any) -> dict[str, Any]:
    """A job's inputs: the record-format version and ``parts`` (model, data, attack, parameters, seed ...)."""
    return {"format": RECORD_FORMAT, **parts}
