"""Small multiples for the audit report: one panel per model, a shared legend outside the data,
sized to stay legible on an A4 page (7 in wide, 9 pt text or larger)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
WIDTH_IN = 7.0


def _grid(n: int, height: float = 2.6) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_IN, height * rows + 0.9), dpi=150, squeeze=False,
                             sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _finish(fig: Any, handles: list[Any], labels: list[str], path: Path, ncol: int) -> Path:
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    rows = (len(labels) + ncol - 1) // ncol
    fig.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 1))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def robust_vs_eps_panels(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Robust accuracy vs eps (x/255): one panel per model, one line per attack, dashed clean accuracy."""
    runs = list(dict.fromkeys(r["run"] for r in records))
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    fig, axes = _grid(len(runs))
    for ax, run in zip(axes, runs):
        mine = [r for r in records if r["run"] == run]
        for i, attack in enumerate(attacks):
            pts = sorted((255 * r["eps"], r["robust_accuracy"]) for r in mine if r["attack"] == attack)
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.5)
        ax.axhline(mine[0]["clean_accuracy"], color="grey", ls="--", lw=1)
        ax.set_title(f"{run} (n = {mine[0].get('n', '?')})", fontsize=10)
        ax.set_xlabel("ε per pixel (x/255)", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    axes[0].set_ylabel("robust accuracy", fontsize=9)
    handles = [Line2D([], [], color=f"C{i}", marker=MARKERS[i % len(MARKERS)], ms=4) for i in range(len(attacks))]
    handles.append(Line2D([], [], color="grey", ls="--"))
    labels = [a.upper() for a in attacks] + ["clean accuracy"]
    return _finish(fig, handles, labels, Path(path), ncol=min(len(labels), 5))


def l2_vs_queries_panels(records: Sequence[Mapping[str, Any]], path: str | Path,
                         names: Mapping[str, str] | None = None) -> Path:
    """Median L2 vs queries: one panel per model, colour = attack, line style = defense (solid: none)."""
    names = dict(names or {})
    runs = list(dict.fromkeys(r["run"] for r in records))
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    specs = list(dict.fromkeys(r.get("defense_spec") or r["defense"] for r in records))
    specs.sort(key=lambda s: s != "none")
    fig, axes = _grid(len(runs))
    for ax, run in zip(axes, runs):
        mine = [r for r in records if r["run"] == run]
        for i, attack in enumerate(attacks):
            for j, spec in enumerate(specs):
                pts = sorted((r["budget"], r["median_l2"]) for r in mine if r["attack"] == attack
                             and (r.get("defense_spec") or r["defense"]) == spec and r.get("median_l2") is not None)
                if pts:
                    ax.plot(*zip(*pts), color=f"C{i}", ls=STYLES[j % len(STYLES)], marker=MARKERS[i % len(MARKERS)],
                            ms=3.5, lw=1.6 if spec == "none" else 1.3)
        n = mine[0].get("n_images", "?")
        ax.set_title(f"{run} (n = {n} images)", fontsize=10)
        ax.set_xlabel("queries per image", fontsize=9)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=9)
    axes[0].set_ylabel("median L2 of the adversarial", fontsize=9)
    handles = [Line2D([], [], color=f"C{i}", marker=MARKERS[i % len(MARKERS)], ms=4) for i in range(len(attacks))]
    labels = [a.upper() for a in attacks]
    handles += [Line2D([], [], color="black", ls=STYLES[j % len(STYLES)]) for j in range(len(specs))]
    labels += [names.get(s, s) if s != "none" else "no defense" for s in specs]
    return _finish(fig, handles, labels, Path(path), ncol=min(max(len(attacks), 2), 4))
