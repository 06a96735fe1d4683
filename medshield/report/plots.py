"""Plots from records (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(records: Sequence[Mapping[str, Any]], x: str, y: str, group: str | Sequence[str], path: str | Path, *,
              xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
              x_scale: float = 1.0, baseline: str | None = None) -> Path:
    """One line per distinct ``group`` value (or tuple of values), ``y`` against ``x * x_scale``; ``baseline``
    draws the first record's value of that key as a dashed line (e.g. clean accuracy)."""
    groups = [group] if isinstance(group, str) else list(group)
    lines: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        label = " / ".join(str(rec.get(g)) for g in groups)
        lines.setdefault(label, []).append((float(rec[x]) * x_scale, float(rec[y])))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if baseline and records:
        ax.axhline(float(records[0][baseline]), color="grey", linestyle="--", label=baseline.replace("_", " "))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap(matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str], path: str | Path, *,
            title: str | None = None, xlabel: str = "", ylabel: str = "", fmt: str = ".1%", vmin: float = 0.0,
            vmax: float = 1.0) -> Path:
    """An annotated heat map (e.g. a source x target transfer-accuracy matrix)."""
    fig, ax = plt.subplots(figsize=(1.4 * len(col_labels) + 2, 1.1 * len(row_labels) + 1.5), dpi=120)
    im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
