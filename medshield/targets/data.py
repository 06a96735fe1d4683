"""The data a target is evaluated on: a dataset name or CSV manifest, loaded at the card's input size
and channels, checked against the card's task and classes."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from medshield.data import Dataset, load_dataset, load_manifest, resolve_data_dir
from medshield.data.medmnist import MEDMNIST_2D, MEDMNIST_SIZES, medmnist_filename
from medshield.errors import MedShieldError
from medshield.models.checkpoint import CONFIG_FILE, read_json
from medshield.targets.card import CardError
from medshield.targets.target import Target

log = logging.getLogger(__name__)


def data_options(config: dict[str, Any]) -> dict[str, Any]:
    """The dataset options a run was trained with (size, rgb, resize), from its ``config.json``."""
    data = config.get("data", {})
    return {k: data.get(k) for k in ("size", "rgb", "resize", "seed") if data.get(k) is not None}


def run_config(target: Target) -> dict[str, Any]:
    """A MedShield run's ``config.json`` (empty for other formats)."""
    if target.format != "medshield_run":
        return {}
    return read_json(target.card.resolve(target.card.model.path) / CONFIG_FILE)


def _medmnist_options(name: str, data_dir: str | Path | None, target: Target) -> dict[str, Any]:
    """The MedMNIST file closest to the card's size: the native one when present, else 28x28 resized."""
    size = target.image_size
    if size in MEDMNIST_SIZES and (resolve_data_dir(data_dir) / medmnist_filename(name, size)).is_file():
        return {"size": size}
    if target.card.input.resize == "refuse" and size != 28:
        raise CardError(f"{target.card.where()}: input.resize: refuse, and {name} has no {size}x{size} file "
                        f"({medmnist_filename(name, size) if size in MEDMNIST_SIZES else 'MedMNIST sizes are 28, 64, 128, 224'})")
    return {"size": 28, "resize": size if size != 28 else None}


def load_target_data(target: Target, dataset: str | None = None, data_dir: str | Path | None = None,
                     manifest: str | Path | None = None, seed: int = 0) -> Dataset:
    """The dataset for ``target``: a run's own options for MedShield runs; otherwise ``dataset`` (a name
    or a ``.csv`` manifest) or ``manifest``, at the card's size and channels."""
    config = run_config(target)
    if manifest is not None:
        dataset = str(manifest)
    if config and not (dataset and str(dataset).lower().endswith(".csv")):
        name = dataset or config.get("data", {}).get("dataset")
        if not name:
            raise MedShieldError("no dataset given and the run's config.json names none; pass --dataset")
        ds = load_dataset(name, data_dir, **data_options(config))
    elif not dataset:
        raise MedShieldError(f"{target.name}: give the data to test it on: --dataset NAME [--data-dir DIR] or --manifest CSV")
    elif str(dataset).lower().endswith(".csv"):
        window = target.card.input.window
        ds = load_manifest(dataset, size=target.image_size, rgb=target.channels == 3, classes=target.class_names,
                           positive=target.positive_names, window=(window.center, window.width) if window else None,
                           seed=seed)
    else:
        key = dataset.lower().strip()
        opts = _medmnist_options(key, data_dir, target) if key in MEDMNIST_2D or key.endswith("mnist") \
            else {"size": target.image_size}
        ds = load_dataset(dataset, data_dir, rgb=target.channels == 3, seed=seed, **opts)
    return fit_data(target, ds)


def fit_data(target: Target, ds: Dataset) -> Dataset:
    """Check ``ds`` fits ``target`` (image shape, number of classes/findings); the card's positive class wins."""
    if ds.channels != target.channels or ds.image_size != target.image_size:
        raise MedShieldError(
            f"{ds.name} gives {ds.channels}x{ds.image_size}x{ds.image_size} images but the model expects "
            f"{target.channels}x{target.image_size}x{target.image_size} ({target.name}); pass matching --size/--rgb")
    multilabel = ds.test.labels.ndim == 2
    if (target.task == "multilabel") != multilabel:
        raise MedShieldError(f"{ds.name} is {'multi' if multilabel else 'single'}-label but {target.name}'s task is {target.task}")
    if ds.num_classes != len(target.class_names):
        raise MedShieldError(f"{ds.name} has {ds.num_classes} classes but the model predicts "
                             f"{len(target.class_names)} ({target.name}: {', '.join(target.class_names)})")
    if [c.lower() for c in ds.class_names] != [c.lower() for c in target.class_names] and target.format != "medshield_run":
        log.warning("%s: class names %s differ from the card's %s; label k is taken to mean the card's class k",
                    ds.name, ds.class_names, target.class_names)
    if target.task != "multilabel" and target.positive_class != ds.positive_class:
        ds = dataclasses.replace(ds, positive_class=target.positive_class)
    return ds
