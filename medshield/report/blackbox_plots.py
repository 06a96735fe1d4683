"""Figures and tables of black-box results, rendered from ``blackbox.json`` records: L2 vs queries
(solid mean, dashed median; thesis Figure 5-3), one image's adversarial at each budget (Figure 5-4)
and the Markdown table with the GBBA/HSJA ratio (Table 5-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _defense(record: dict[str, Any]) -> str:
    """The defense with its parameters (``dnd:m=0.01:n=0.5``); older records carry only the name."""
    return record.get("defense_spec") or record["defense"]


def plot_l2_vs_queries(summary: dict[str, Any], path: str | Path) -> Path:
    """L2 distance vs query budget per (attack, defense): solid line mean, dashed line median."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in summary["records"]:
        groups.setdefault((r["attack"], _defense(r)), []).append(r)
    for i, ((attack, defense), recs) in enumerate(groups.items()):
        recs = sorted(recs, key=lambda r: r["budget"])
        b = [r["budget"] for r in recs]
        label = attack.upper() if defense == "none" else f"{attack.upper()} ({defense})"
        color = f"C{i}"
        ax.plot(b, [r["mean_l2"] for r in recs], "-o", color=color, label=f"{label} mean", ms=3)
        ax.plot(b, [r["median_l2"] for r in recs], "--", color=color, label=f"{label} median")
    ax.set_xlabel("queries")
    ax.set_ylabel("L2 distance")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_strips(summary: dict[str, Any], path: str | Path) -> Path:
    """One row per (attack, defense): the original image, then its adversarial at each budget."""
    plt = _pyplot()
    shape = summary["image_shape"]
    strips = summary["strips"]
    budgets = sorted({int(b) for s in strips.values() for b in s})
    fig, axes = plt.subplots(len(strips), len(budgets) + 1, figsize=(1.6 * (len(budgets) + 1), 1.8 * len(strips)),
                             squeeze=False)

    def show(ax: Any, flat: list[float], title: str) -> None:
        img = np.asarray(flat, dtype=float).reshape(shape).transpose(1, 2, 0)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    l2 = {(r["attack"], _defense(r), r["budget"]): r["l2_per_image"][0] for r in summary["records"]}
    for row, (key, strip) in enumerate(strips.items()):
        attack, defense = key.split("|")
        show(axes[row, 0], summary["first_image"], f"{attack.upper()} original")
        for col, b in enumerate(budgets, start=1):
            d = l2.get((attack, defense, b))
            when = f"{b // 1000}K" if b % 1000 == 0 else f"{b:,} q"
            show(axes[row, col], strip[str(b)], f"{when} L2={d:.2f}" if d is not None else f"{when}: none")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(summary: dict[str, Any]) -> str:
    """Mean / median L2 per attack and budget (Table 5-4 analogue), with the GBBA/HSJA ratio rows."""
    recs = summary["records"]
    budgets = sorted({r["budget"] for r in recs})
    by = {(r["attack"], _defense(r), r["budget"]): r for r in recs}
    rows = sorted({(_defense(r), r["attack"]) for r in recs}, key=lambda k: (k[0], [r["attack"] for r in recs].index(k[1])))
    head = "| defense | attack | stat | " + " | ".join(f"{b // 1000}K" if b % 1000 == 0 else str(b) for b in budgets) + " |"
    lines = [head, "|" + " --- |" * (3 + len(budgets))]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    for defense, attack in rows:
        cells = [by.get((attack, defense, b)) for b in budgets]
        for stat in ("mean_l2", "median_l2"):
            vals = [c[stat] if c else None for c in cells]
            lines.append(f"| {defense} | {attack.upper()} | {stat.split('_')[0]} | " + " | ".join(map(fmt, vals)) + " |")
        if defense != "none":  # the claims' L2 above; do they really fool the classifier / the noisy service?
            for stat, label in (("success_rate", "fools model"), ("defended_success_rate", "fools defended")):
                vals = [c.get(stat) if c else None for c in cells]
                lines.append(f"| {defense} | {attack.upper()} | {label} | " + " | ".join(map(pct, vals)) + " |")
    for defense in sorted({d for d, _ in rows}):
        if ("gbba", defense, budgets[0]) in by and ("hsja", defense, budgets[0]) in by:
            for stat in ("mean_l2", "median_l2"):
                vals = []
                for b in budgets:
                    g, h = by[("gbba", defense, b)][stat], by[("hsja", defense, b)][stat]
                    vals.append(g / h if g is not None and h else None)
                lines.append(f"| {defense} | GBBA/HSJA | {stat.split('_')[0]} | " + " | ".join(map(fmt, vals)) + " |")
    return "\n".join(lines) + "\n" + clean_table(recs)


def clean_table(records: list[dict[str, Any]]) -> str:
    """What each defense costs on clean inputs (whole split), and the attacker's repeats per query."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("defended_clean_accuracy") is not None:
            seen.setdefault(_defense(r), r)
    if not seen:
        return ""
    lines = ["", "| defense | clean accuracy | clean AUC | flip rate | attacker repeats k |", "| --- | --- | --- | --- | --- |"]
    for spec, r in seen.items():
        auc = r.get("defended_clean_auc")
        lines.append(f"| {spec} | {r['defended_clean_accuracy']:.4f} | {'-' if auc is None else f'{auc:.4f}'} | "
                     f"{r['flip_rate']:.4f} | {r.get('adaptive_k', 1)} |")
    return "\n".join(lines) + "\n"
