"""A multi-label task built from real single-label images, for testing multi-label support where no
multi-label medical set is at hand.

:func:`mosaic_dataset` tiles ``rows x cols`` images of a binary dataset (e.g. PneumoniaMNIST) into one
image; finding ``k`` is "the disease is present in tile ``k``". The findings are independent and each
has the source's prevalence; the pixels are real radiographs. A chest X-ray model predicts many
findings from one image in the same way (one sigmoid per finding), so hiding one finding while the
others stay put is the same attack problem, with a known ground truth per finding.
"""

from __future__ import annotations

import torch

from medshield.data.base import SPLITS, Dataset, ImageSet
from medshield.errors import DataError


def tile_names(positive: str, rows: int, cols: int) -> list[str]:
    """Finding names: ``pneumonia@r0c0``, ``pneumonia@r0c1``, ... (row-major)."""
    return [f"{positive}@r{r}c{c}" for r in range(rows) for c in range(cols)]


def mosaic_split(part: ImageSet, positive_class: int, n: int, rows: int, cols: int,
                 generator: torch.Generator) -> ImageSet:
    """``n`` mosaics of ``rows x cols`` random images of ``part`` (drawn with replacement); labels
    ``[n, rows * cols]`` with 1 where the tile shows ``positive_class``."""
    k = rows * cols
    pick = torch.randint(0, len(part), (n, k), generator=generator)
    tiles = part.data[pick.flatten()]  # [n*k, C, H, W], the source's dtype (uint8 stays uint8)
    c, h, w = tiles.shape[1:]
    grid = tiles.view(n, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * h, cols * w)
    labels = (part.labels[pick] == positive_class).long()
    return ImageSet(grid.contiguous(), labels, part.rgb)


def mosaic_dataset(ds: Dataset, rows: int = 2, cols: int = 2, sizes: dict[str, int] | None = None,
                   seed: int = 0) -> Dataset:
    """A multi-label :class:`Dataset` of ``rows x cols`` mosaics of the binary dataset ``ds``.

    Each split's mosaics use only that split's images (no leakage); ``sizes`` gives the number of
    mosaics per split (default: as many as the split has images). Deterministic from ``seed``.

    Example::

        pn = load_dataset("pneumoniamnist", "../shared/data")
        ml = mosaic_dataset(pn, 2, 2, sizes={"train": 3000, "val": 300, "test": 600})
        ml.test.labels.shape    # [600, 4]; ml.class_names == ["pneumonia@r0c0", ...]
    """
    if ds.num_classes != 2 or ds.positive_class is None:
        raise DataError(f"mosaics need a binary dataset with a positive class; {ds.name} has {ds.class_names}")
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise DataError(f"a mosaic needs at least 2 tiles, got {rows}x{cols}")
    sizes = sizes or {}
    g = torch.Generator().manual_seed(seed)
    parts = {s: mosaic_split(ds.split(s), ds.positive_class, int(sizes.get(s, len(ds.split(s)))), rows, cols, g)
             for s in SPLITS}
    names = tile_names(ds.class_names[ds.positive_class], rows, cols)
    return Dataset(name=f"{ds.name}-mosaic{rows}x{cols}", train=parts["train"], val=parts["val"], test=parts["test"],
                   class_names=names, positive_class=None,
                   description=f"{rows}x{cols} mosaics of {ds.name}; finding k = "
                               f"{ds.class_names[ds.positive_class]} in tile k (row-major)",
                   synthetic=ds.synthetic, extra={"multilabel": True, "source": ds.name, "grid": [rows, cols]})
