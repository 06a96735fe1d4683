"""MedMNIST v2 ``.npz`` files (Yang et al., Scientific Data 2023): any 2D dataset, any size."""

from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medshield.data.base import SPLITS, Dataset, ImageSet, resize_images
from medshield.errors import DataError


@dataclass(frozen=True)
class MedMNISTInfo:
    labels: tuple[str, ...]
    channels: int
    positive_class: int | None = None
    md5_28: str | None = None  # MD5 of the official 28x28 file (zenodo record 6496656)


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")

MEDMNIST_2D: dict[str, MedMNISTInfo] = {
    "pneumoniamnist": MedMNISTInfo(("normal", "pneumonia"), 1, 1, "28209eda62fecd6e6a2d98b1501bb15f"),
    "breastmnist": MedMNISTInfo(("malignant", "normal, benign"), 1, 0, "750601b1f35ba3300ea97c75c52ff8f6"),
    "pathmnist": MedMNISTInfo(
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
        3, None, "a8b06965200029087d5bd730944a56c1"),
    "dermamnist": MedMNISTInfo(
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
         "vascular lesions"), 3, None, "0744692d530f8e62ec473284d019b0c7"),
    "octmnist": MedMNISTInfo(("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
                             1, None, "c68d92d5b585d8d81f7112f81e2d0842"),
    "retinamnist": MedMNISTInfo(("0", "1", "2", "3", "4"), 3, None, "bd4c0672f1bba3e3a89f0e4e876791e4"),
    "bloodmnist": MedMNISTInfo(
        ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
         "neutrophil", "platelet"), 3, None, "7053d0359d879ad8a5505303e11de1dc"),
    "tissuemnist": MedMNISTInfo(
        ("collecting duct, connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
         "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
         "thick ascending limb"), 1, None, "ebe78ee8b05294063de985d821c1c34b"),
    "organamnist": MedMNISTInfo(_ORGANS, 1, None, "866b832ed4eeba67bfb9edee1d5544e6"),
    "organcmnist": MedMNISTInfo(_ORGANS, 1, None, "0afa5834fb105f7705a7d93372119a21"),
    "organsmnist": MedMNISTInfo(_ORGANS, 1, None, "e5c39f1af030238290b9557d9503af9d"),
}
MEDMNIST_SIZES = (28, 64, 128, 224)
ZENODO_URL = "https://zenodo.org/record/6496656/files/{name}.npz?download=1"


def medmnist_filename(name: str, size: int = 28) -> str:
    """``pneumoniamnist.npz`` for 28×28, ``pneumoniamnist_224.npz`` for the MedMNIST+ sizes."""
    if size not in MEDMNIST_SIZES:
        raise DataError(f"MedMNIST comes in sizes {MEDMNIST_SIZES}, not {size}; use --resize for others")
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def load_medmnist(
    name: str,
    data_dir: Path,
    size: int = 28,
    rgb: bool = False,
    resize: int | None = None,
) -> Dataset:
    """Load a 2D MedMNIST dataset's official train/val/test splits from ``data_dir``."""
    if name == "chestmnist":
        raise DataError("chestmnist is multi-label; MedShield supports single-label classification")
    path = Path(data_dir) / medmnist_filename(name, size)
    if not path.is_file():
        raise DataError(
            f"{path} not found: put {path.name} (MedMNIST v2, https://medmnist.com) in {data_dir} "
            f"or pass --data-dir / set MEDSHIELD_DATA"
        )
    arrays = read_npz(path)
    info = MEDMNIST_2D.get(name)
    splits = {s: _to_imageset(arrays, s, path, rgb, resize) for s in SPLITS}
    num_classes = int(max(int(splits[s].labels.max()) for s in SPLITS)) + 1
    labels = list(info.labels) if info else [f"class_{k}" for k in range(num_classes)]
    if num_classes > len(labels):
        raise DataError(f"{path}: labels go up to {num_classes - 1} but {name} has {len(labels)} classes")
    return Dataset(
        name=name, class_names=labels, positive_class=info.positive_class if info else None,
        description=f"MedMNIST v2 {name} ({size}x{size})", extra={"path": str(path)}, **splits,
    )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a MedMNIST npz without ever unpickling, with clear errors for corrupt files."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in f.files]
            if missing:
                raise DataError(f"{path} is not a MedMNIST file: missing arrays {', '.join(missing)}")
            return {k: f[k] for k in f.files}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is corrupt or not an .npz file ({exc}); download it again") from exc


def _to_imageset(arrays: dict[str, np.ndarray], split: str, path: Path, rgb: bool, resize: int | None) -> ImageSet:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        data = torch.from_numpy(images).unsqueeze(1)
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    else:
        raise DataError(f"{path}: {split}_images must be (N, H, W) or (N, H, W, 3), got {images.shape}")
    labels = labels.reshape(labels.shape[0], -1)
    if labels.shape[0] != data.shape[0] or labels.shape[1] != 1:
        raise DataError(f"{path}: {split}_labels must be (N, 1) with N={data.shape[0]}, got {arrays[f'{split}_labels'].shape}")
    if resize:
        data = resize_images(data, resize)
    return ImageSet(data, torch.from_numpy(labels[:, 0].astype(np.int64)), rgb=rgb)


def download_medmnist(name: str, data_dir: Path) -> Path:
    """Download a 28×28 MedMNIST file and verify its MD5 (needs a network; never used in tests)."""
    info = MEDMNIST_2D.get(name)
    if info is None or info.md5_28 is None:
        raise DataError(f"no download source known for {name!r}; known: {', '.join(sorted(MEDMNIST_2D))}")
    target = Path(data_dir) / medmnist_filename(name, 28)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    digest = hashlib.md5()  # noqa: S324 - MedMNIST publishes MD5
    try:
        with urllib.request.urlopen(ZENODO_URL.format(name=name), timeout=60) as resp, open(tmp, "wb") as out:  # noqa: S310
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {name} failed ({exc}); put {target.name} in {data_dir} by hand") from exc
    if digest.hexdigest() != info.md5_28:
        tmp.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {name}: got {digest.hexdigest()}, expected {info.md5_28}")
    tmp.replace(target)
    return target
