"""In-memory image sets: uint8 or float storage, float32 [0, 1] NCHW out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from medshield.errors import DataError

SPLITS = ("train", "val", "test")
ENV_DATA_DIR = "MEDSHIELD_DATA"


@dataclass(repr=False)
class ImageSet:
    """Images ``[N, C, H, W]`` (uint8 0..255 or float in [0, 1]) and integer labels ``[N]``.

    ``rgb=True`` presents grey images as 3 identical channels (the thesis's grey-vs-RGB study).
    """

    data: torch.Tensor
    labels: torch.Tensor
    rgb: bool = False

    def __post_init__(self) -> None:
        if self.data.ndim != 4:
            raise DataError(f"images must be [N, C, H, W], got shape {tuple(self.data.shape)}")
        if self.labels.ndim not in (1, 2) or self.labels.shape[0] != self.data.shape[0]:
            raise DataError(
                f"labels must be [N] (or [N, K] 0/1 findings) with N={self.data.shape[0]}, got shape {tuple(self.labels.shape)}"
            )
        if self.data.shape[1] not in (1, 3):
            raise DataError(f"images need 1 or 3 channels, got {self.data.shape[1]}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        return f"ImageSet(n={len(self)}, shape={tuple(self.data.shape[1:])}, dtype={self.data.dtype}, rgb={self.rgb})"

    @property
    def channels(self) -> int:
        return 3 if self.rgb else int(self.data.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.data.shape[-1])

    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Float32 images in [0, 1] (all, or ``index``)."""
        x = self.data if index is None else self.data[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float().clone()
        if self.rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        return x

    def get(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(index), self.labels[index]

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.get(order[start : start + batch_size])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.data[index], self.labels[index], self.rgb)

    def class_counts(self, num_classes: int) -> list[int]:
        """Images per class (multi-label: positives per finding)."""
        if self.labels.ndim == 2:
            return self.labels.sum(0).tolist()
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class Dataset:
    """A dataset with train/val/test splits and class metadata.

    ``positive_class`` is the disease class of a binary task (the one sensitivity refers to).
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    positive_class: int | None = None
    description: str = ""
    synthetic: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.test.channels

    @property
    def image_size(self) -> int:
        return self.test.image_size

    def split(self, name: str) -> ImageSet:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "classes": self.class_names,
            "positive_class": self.positive_class,
            "image_size": self.image_size,
            "channels": self.channels,
            "synthetic": self.synthetic,
            "counts": {s: self.split(s).class_counts(self.num_classes) for s in SPLITS},
        }


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``--data-dir``, else ``$MEDSHIELD_DATA``, else ``~/.medshield/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else Path.home() / ".medshield" / "data"


def resize_images(data: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size``×``size`` (bilinear, antialiased), keeping dtype."""
    if data.shape[-1] == size and data.shape[-2] == size:
        return data
    out = []
    for chunk in data.split(512):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round().clamp_(0, 255).to(torch.uint8) if data.dtype == torch.uint8 else y.clamp_(0, 1))
    return torch.cat(out)


def stratified_split(
    labels: torch.Tensor,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stratified train/val/test indices (per class, shuffled by ``seed``).

    With ``groups`` (e.g. patient ids), whole groups go to one split so no patient leaks across.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    g = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        units = _group_units(idx, groups) if groups is not None else [[i] for i in idx.tolist()]
        perm = torch.randperm(len(units), generator=g).tolist()
        n = sum(len(u) for u in units)
        cuts = (round(fractions[0] * n), round((fractions[0] + fractions[1]) * n))
        taken = 0
        for j in perm:
            part = 0 if taken < cuts[0] else (1 if taken < cuts[1] else 2)
            parts[part].extend(units[j])
            taken += len(units[j])
    return tuple(torch.tensor(sorted(p), dtype=torch.long) for p in parts)  # type: ignore[return-value]


def _group_units(idx: torch.Tensor, groups: list[str]) -> list[list[int]]:
    by_group: dict[str, list[int]] = {}
    for i in idx.tolist():
        by_group.setdefault(groups[i], []).append(i)
    return [by_group[k] for k in sorted(by_group)]
