"""Image-folder datasets as users download them: Kermany chest X-ray, COVID-CT, BreakHis, any class-per-folder tree."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medshield.data.base import Dataset, ImageSet, stratified_split
from medshield.data.dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from medshield.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES}


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_images(paths: Sequence[Path], size: int, rgb: bool) -> torch.Tensor:
    """Decode and resize images to uint8 ``[N, C, size, size]``; a corrupt file names itself."""
    mode = "RGB" if rgb else "L"
    out = np.empty((len(paths), size, size, 3 if rgb else 1), dtype=np.uint8)
    for i, path in enumerate(paths):
        if is_dicom(path):
            out[i] = dicom_uint8(path, size, rgb)
            continue
        try:
            with Image.open(path) as im:
                im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(im).reshape(size, size, -1)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def dicom_uint8(path: Path, size: int, rgb: bool) -> np.ndarray:
    """A DICOM image (windowed to [0, 1], see :func:`read_dicom`) as uint8 ``[size, size, C]``."""
    arr = read_dicom(path)
    if arr.ndim == 3 and not rgb:
        arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    im = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    im = im.convert("RGB" if rgb else "L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im).reshape(size, size, -1)


def _require_dir(root: Path, what: str) -> None:
    if not root.is_dir():
        raise DataError(f"{root} not found: {what}")


def load_class_folders(
    root: Path,
    size: int = 224,
    rgb: bool = False,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    name: str = "folder",
    positive_class: int | None = None,
    group_of: object = None,
    display_names: Sequence[str] | None = None,
) -> Dataset:
    """Any ``root/<class>/**/*.png`` tree, split deterministically and stratified (80/10/10 by default)."""
    _require_dir(root, "expected a folder with one sub-folder per class")
    classes = list(class_names) if class_names else sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for k, cls in enumerate(classes):
        files = list_images(root / cls)
        if not files:
            raise DataError(f"no images found under {root / cls}")
        paths += files
        labels += [k] * len(files)
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class folders, found {classes}")
    y = torch.tensor(labels)
    groups = [group_of(p) for p in paths] if callable(group_of) else None
    parts = stratified_split(y, fractions, seed, groups)
    data = read_images(paths, size, rgb)
    sets = [ImageSet(data[i], y[i]) for i in parts]
    return Dataset(name, *sets, class_names=list(display_names or classes), positive_class=positive_class,
                   description=f"class folders under {root}", extra={"root": str(root)})


def load_kermany(root: Path, size: int = 224, rgb: bool = False, seed: int = 0) -> Dataset:
    """Kermany et al. 2018 chest X-rays: ``train|val|test/NORMAL|PNEUMONIA``; a missing (or the tiny
    official 16-image) val folder is replaced by a stratified 10% split of train."""
    if not (root / "train").is_dir() and (root / "chest_xray" / "train").is_dir():
        root = root / "chest_xray"
    _require_dir(root / "train", "expected the Kermany layout train|test/NORMAL|PNEUMONIA")
    _require_dir(root / "test", "expected the Kermany layout train|test/NORMAL|PNEUMONIA")
    classes = ["NORMAL", "PNEUMONIA"]

    def read_split(split: str) -> ImageSet:
        paths, labels = [], []
        for k, cls in enumerate(classes):
            files = list_images(root / split / cls)
            if not files:
                raise DataError(f"no images found under {root / split / cls}")
            paths += files
            labels += [k] * len(files)
        return ImageSet(read_images(paths, size, rgb), torch.tensor(labels))

    train, test = read_split("train"), read_split("test")
    val_dir_ok = (root / "val").is_dir() and len(list_images(root / "val")) >= 100
    if val_dir_ok:
        val = read_split("val")
    else:
        tr, va, _ = stratified_split(train.labels, (0.9, 0.1, 0.0), seed)
        train, val = train.subset(tr), train.subset(va)
    return Dataset("chest_xray", train, val, test, class_names=["normal", "pneumonia"], positive_class=1,
                   description=f"Kermany chest X-ray ({size}x{size})", extra={"root": str(root)})


def load_covid_ct(root: Path, size: int = 224, rgb: bool = False, seed: int = 0) -> Dataset:
    """COVID-CT (Yang et al. 2020): ``CT_COVID/``, ``CT_NonCOVID/``; uses ``Data-split/{COVID,NonCOVID}/
    {train,val,test}CT_*.txt`` lists when present, else a stratified 80/10/10 split."""
    folders = {"CT_NonCOVID": 0, "CT_COVID": 1}
    for f in folders:
        _require_dir(root / f, "expected CT_COVID/ and CT_NonCOVID/ folders")
    split_dir = root / "Data-split"
    if not split_dir.is_dir():
        return load_class_folders(root, size, rgb, class_names=list(folders), seed=seed, name="covid_ct",
                                  positive_class=1, display_names=["non-covid", "covid"])
    sets = []
    for split in ("train", "val", "test"):
        paths, labels = [], []
        for folder, k in folders.items():
            short = folder.removeprefix("CT_")
            listing = split_dir / short / f"{split}{folder}.txt"
            if not listing.is_file():
                raise DataError(f"{listing} not found (COVID-CT split lists)")
            names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
            paths += [root / folder / n for n in names]
            labels += [k] * len(names)
        sets.append(ImageSet(read_images(paths, size, rgb), torch.tensor(labels)))
    return Dataset("covid_ct", *sets, class_names=["non-covid", "covid"], positive_class=1,
                   description=f"COVID-CT ({size}x{size})", extra={"root": str(root)})


_BREAKHIS_PATIENT = re.compile(r"SOB_[BM]_[A-Z]+-(\d+-[0-9A-Z]+)-")


def breakhis_patient(path: Path) -> str:
    """Patient id from a BreakHis file name (``SOB_B_A-14-22549AB-40-001.png`` -> ``14-22549AB``)."""
    m = _BREAKHIS_PATIENT.search(path.name)
    return m.group(1) if m else path.name


def load_breakhis(root: Path, size: int = 224, rgb: bool = True, seed: int = 0) -> Dataset:
    """BreakHis (Spanhol et al. 2016): ``benign|malignant/**/*.png``, split by patient so no patient
    appears in two splits."""
    if not (root / "benign").is_dir():
        for candidate in root.rglob("benign"):
            if candidate.is_dir() and (candidate.parent / "malignant").is_dir():
                root = candidate.parent
                break
    return load_class_folders(root, size, rgb, class_names=["benign", "malignant"], seed=seed,
                              name="breakhis", positive_class=1, group_of=breakhis_patient)
