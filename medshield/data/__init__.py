"""Datasets: MedMNIST files, image-folder trees and the built-in synthetic demo data.

``load_dataset(name, data_dir=...)`` is the one entry point; every loader returns a
:class:`Dataset` of float32 images in [0, 1] (NCHW) and integer labels.
"""

from __future__ import annotations

from pathlib import Path

from medshield.data.base import ENV_DATA_DIR, SPLITS, Dataset, ImageSet, resolve_data_dir, stratified_split
from medshield.data.demo import chest_phantoms, load_demo
from medshield.data.dicom import read_dicom
from medshield.data.folders import load_breakhis, load_class_folders, load_covid_ct, load_kermany
from medshield.data.manifest import load_manifest
from medshield.data.medmnist import MEDMNIST_2D, download_medmnist, load_medmnist, medmnist_filename
from medshield.errors import DataError
from medshield.registry import unknown_name_message

FOLDER_DATASETS = {"chest_xray": ("chest_xray", load_kermany), "covid_ct": ("COVID-CT", load_covid_ct),
                   "breakhis": ("BreaKHis_v1", load_breakhis)}


def dataset_names() -> list[str]:
    return sorted(["demo", "folder", *MEDMNIST_2D, *FOLDER_DATASETS])


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    size: int | None = None,
    rgb: bool = False,
    resize: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name.

    - ``demo``: synthetic phantoms generated in memory (``size`` default 28).
    - a MedMNIST 2D name (``pneumoniamnist``…): ``DATA_DIR/<name>[_<size>].npz``.
    - ``chest_xray``/``covid_ct``/``breakhis``: ``DATA_DIR/<folder>`` (or ``DATA_DIR`` itself), images
      resized to ``size`` (default 224).
    - ``folder``: any class-per-folder tree at ``DATA_DIR`` (PNG/JPEG/DICOM).
    - a path ending in ``.csv``: a CSV manifest (:mod:`medshield.data.manifest`), images resized to ``size``.
    """
    key = name.lower().strip()
    if key.endswith(".csv"):
        return load_manifest(Path(name), size=resize or size or 224, rgb=rgb, seed=seed)
    if key == "demo":
        return load_demo(size=size or resize or 28, seed=seed, rgb=rgb)
    root = resolve_data_dir(data_dir)
    if key in MEDMNIST_2D or key.endswith("mnist"):
        return load_medmnist(key, root, size=size or 28, rgb=rgb, resize=resize)
    if key in FOLDER_DATASETS:
        return FOLDER_DATASETS[key][1](_folder(root, key), size=resize or size or 224, rgb=rgb, seed=seed)
    if key == "folder":
        return load_class_folders(root, size=resize or size or 224, rgb=rgb, seed=seed)
    raise DataError(unknown_name_message("dataset", name, dataset_names()))


def _folder(root: Path, key: str) -> Path:
    """A folder dataset's tree: ``DATA_DIR/<folder>``, or ``DATA_DIR`` itself when that is the tree."""
    folder = root / FOLDER_DATASETS[key][0]
    return folder if folder.is_dir() else root


def dataset_files(name: str, data_dir: str | Path | None = None, size: int | None = None) -> list[Path]:
    """The files or folders a named dataset is read from (as :func:`load_dataset` finds them), so that a
    job's identity can follow their bytes; empty for ``demo`` (generated) and for what is not there."""
    key = name.lower().strip()
    if key == "demo" or key.endswith(".csv"):
        return []
    root = resolve_data_dir(data_dir)
    if key in MEDMNIST_2D or key.endswith("mnist"):
        paths = [root / medmnist_filename(key, size or 28)]
    elif key in FOLDER_DATASETS:
        paths = [_folder(root, key)]
    else:
        paths = [root]
    return [p for p in paths if p.exists()]


__all__ = [
    "ENV_DATA_DIR", "SPLITS", "Dataset", "ImageSet", "chest_phantoms", "dataset_files", "dataset_names", "download_medmnist",
    "load_breakhis", "load_class_folders", "load_covid_ct", "load_dataset", "load_demo", "load_kermany",
    "load_manifest", "load_medmnist", "read_dicom", "resolve_data_dir", "stratified_split",
]
