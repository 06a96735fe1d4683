"""CSV manifests: ``path,label[,patient_id][,split]`` or one 0/1 column per finding (multi-label).

- ``path``: an image file (PNG/JPEG/BMP/TIFF or DICOM), relative to the CSV's folder.
- ``label``: a class name or index (single-label); without a ``label`` column every other column
  except ``patient_id`` and ``split`` is a finding with 0/1 values (multi-label, labels ``[N, K]``).
- ``patient_id`` (optional): splits keep each patient in one split.
- ``split`` (optional): ``train``/``val``/``test`` per row; otherwise a deterministic stratified
  (patient-grouped) 80/10/10 split from ``seed``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medshield.data.base import SPLITS, Dataset, ImageSet, stratified_split
from medshield.data.dicom import is_dicom, read_dicom
from medshield.errors import DataError

PATH, LABEL, PATIENT, SPLIT = "path", "label", "patient_id", "split"


def read_image_file(path: Path, size: int, rgb: bool, window: tuple[float, float] | None = None) -> np.ndarray:
    """One image as float32 ``[C, size, size]`` in [0, 1] (DICOM through :func:`read_dicom`)."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    if is_dicom(path):
        arr = read_dicom(path, window)
        if arr.ndim == 3 and not rgb:
            arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L"
        chans = [arr] if arr.ndim == 2 else [arr[..., k] for k in range(3)]
        out = np.stack([_resize_float(c, size) for c in chans])
        return np.repeat(out, 3, axis=0) if rgb and out.shape[0] == 1 else out
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if rgb else "L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _resize_float(channel: np.ndarray, size: int) -> np.ndarray:
    if channel.shape == (size, size):
        return channel.astype(np.float32)
    im = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0, 1)


def _rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except FileNotFoundError:
        raise DataError(f"{csv_path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read the CSV manifest ({exc})") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]
    if PATH not in columns:
        raise DataError(f"{csv_path}: the manifest needs a '{PATH}' column (got {columns})")
    if not rows:
        raise DataError(f"{csv_path}: the manifest has no rows")
    return columns, rows


def _single_labels(csv_path: Path, rows: list[dict[str, str]], classes: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    values = [r[LABEL] for r in rows]
    names = list(classes) if classes else None
    if names is None:
        if all(v.lstrip("-").isdigit() for v in values):
            names = [str(i) for i in range(max(int(v) for v in values) + 1)]
        else:
            names = sorted(set(values))
    out = []
    for line, v in enumerate(values, start=2):
        if v in names:
            out.append(names.index(v))
        elif v.isdigit() and int(v) < len(names):
            out.append(int(v))
        else:
            raise DataError(f"{csv_path}:{line}: label {v!r} is not one of {names} (or an index below {len(names)})")
    return torch.tensor(out), names


def _finding_labels(csv_path: Path, rows: list[dict[str, str]], findings: list[str]) -> torch.Tensor:
    out = np.zeros((len(rows), len(findings)), dtype=np.int64)
    for line, row in enumerate(rows, start=2):
        for k, name in enumerate(findings):
            v = row.get(name, "")
            if v not in ("0", "1", "0.0", "1.0"):
                raise DataError(f"{csv_path}:{line}: finding {name!r} must be 0 or 1, got {v!r}")
            out[line - 2, k] = int(float(v))
    return torch.from_numpy(out)


def load_manifest(csv_path: str | Path, size: int = 224, rgb: bool = False, classes: Sequence[str] | None = None,
                  positive: Sequence[str] | None = None, window: tuple[float, float] | None = None, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Dataset:
    """A :class:`Dataset` from a CSV manifest; ``classes`` (e.g. a card's) fixes the label order."""
    csv_path = Path(csv_path).expanduser()
    columns, rows = _rows(csv_path)
    multilabel = LABEL not in columns
    if multilabel:
        findings = [c for c in columns if c not in (PATH, PATIENT, SPLIT)]
        if classes:
            missing = [c for c in classes if c not in findings]
            if missing:
                raise DataError(f"{csv_path}: the manifest has no column for findings {missing}")
            findings = list(classes)
        if not findings:
            raise DataError(f"{csv_path}: needs a '{LABEL}' column or one 0/1 column per finding")
        labels, names = _finding_labels(csv_path, rows, findings), findings
    else:
        labels, names = _single_labels(csv_path, rows, classes)
    root = csv_path.resolve().parent
    images = np.stack([read_image_file(root / r[PATH] if not Path(r[PATH]).is_absolute() else Path(r[PATH]), size, rgb, window)
                       for r in rows])
    data = torch.from_numpy(images)
    parts = _split_indices(csv_path, rows, columns, labels, seed, fractions)
    sets = [ImageSet(data[i], labels[i]) for i in parts]
    pos = [names.index(p) for p in positive or [] if p in names]
    positive_class = pos[0] if len(pos) == 1 and not multilabel else (1 if len(names) == 2 and not positive and not multilabel else None)
    return Dataset(csv_path.stem, *sets, class_names=names, positive_class=positive_class,
                   description=f"CSV manifest {csv_path} ({len(rows)} images)",
                   extra={"manifest": str(csv_path), "multilabel": multilabel,
                          "patients": len({r.get(PATIENT) for r in rows}) if PATIENT in columns else None})


def _split_indices(csv_path: Path, rows: list[dict[str, str]], columns: list[str], labels: torch.Tensor, seed: int,
                   fractions: tuple[float, float, float]) -> list[torch.Tensor]:
    if SPLIT in columns:
        bad = [(i + 2, r[SPLIT]) for i, r in enumerate(rows) if r[SPLIT] not in SPLITS]
        if bad:
            raise DataError(f"{csv_path}:{bad[0][0]}: split must be one of {', '.join(SPLITS)}, got {bad[0][1]!r}")
        return [torch.tensor([i for i, r in enumerate(rows) if r[SPLIT] == s], dtype=torch.long) for s in SPLITS]
    key = labels if labels.ndim == 1 else stratum(labels)
    if PATIENT not in columns:
        return list(stratified_split(key, fractions, seed))
    return patient_split([r[PATIENT] for r in rows], key, fractions, seed)


def patient_split(patients: list[str], key: torch.Tensor, fractions: tuple[float, float, float],
                  seed: int) -> list[torch.Tensor]:
    """Split whole patients (stratified by each patient's highest label key), so no patient is in two splits."""
    ids = sorted(set(patients))
    index = {p: k for k, p in enumerate(ids)}
    per_patient = torch.zeros(len(ids), dtype=torch.long)
    for row, p in enumerate(patients):
        per_patient[index[p]] = max(int(per_patient[index[p]]), int(key[row]))
    parts = stratified_split(per_patient, fractions, seed)
    where = {int(j): s for s, part in enumerate(parts) for j in part}
    return [torch.tensor([i for i, p in enumerate(patients) if where[index[p]] == s], dtype=torch.long)
            for s in range(3)]


def stratum(findings: torch.Tensor) -> torch.Tensor:
    """A single stratification key per multi-label row: its first positive finding, or K when none."""
    k = findings.shape[1]
    first = torch.where(findings.bool().any(1), findings.float().argmax(1), torch.full((findings.shape[0],), k))
    return first.long()
