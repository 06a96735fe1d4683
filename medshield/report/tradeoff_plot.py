"""The clean-input cost of noise defenses: accuracy and flip rate vs noise level, one panel per sweep
(RND nu; DND m with n fixed; DND n with m fixed), chosen operating points marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medshield.evaluation.defended import SWEEPS
from medshield.report.blackbox_plots import _pyplot


def plot_tradeoff(summary: dict[str, Any], path: str | Path) -> Path:
    """Three panels: clean accuracy (left axis) and flip rate (right axis) vs the swept parameter; the
    dotted line is the undefended accuracy minus ``max_drop``, the star the chosen setting."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SWEEPS), figsize=(4.2 * len(SWEEPS), 3.4), squeeze=False)
    base = summary["undefended_accuracy"]
    for ax, (sweep, (defense, key)) in zip(axes[0], SWEEPS.items()):
        recs = sorted((r for r in summary["records"] if r.get("sweep") == sweep), key=lambda r: r[key])
        xs = [r[key] for r in recs]
        ax.plot(xs, [r["accuracy"] for r in recs], "-o", color="C0", ms=3, label="clean accuracy")
        ax.axhline(base - summary["max_drop"], color="C0", ls=":", lw=1, label=f"-{summary['max_drop'] * 100:g} points")
        twin = ax.twinx()
        twin.plot(xs, [r["flip_rate"] for r in recs], "-s", color="C3", ms=3, label="flip rate")
        twin.set_ylabel("flip rate", color="C3")
        pick = summary["chosen"].get(sweep)
        if pick is not None:
            ax.plot([pick[key]], [pick["accuracy"]], "*", color="k", ms=12, label=f"chosen {key}={pick[key]:g}")
        fixed = f" (n={summary['n_fixed']:g})" if sweep == "dnd_m" else f" (m={summary['m_fixed']:g})" if sweep == "dnd_n" else ""
        ax.set_title(f"{defense.upper()}: {key}{fixed}", fontsize=9)
        ax.set_xlabel(key)
        ax.set_ylabel("clean accuracy", color="C0")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tradeoff_markdown(summary: dict[str, Any]) -> str:
    """Every setting's clean accuracy, AUC and flip rate; chosen operating points marked."""
    lines = [f"# Noise defenses on clean inputs ({summary['split']} split, mean of {summary['repeats']} noisy passes)", "",
             f"Undefended accuracy {summary['undefended_accuracy']:.4f}; chosen = strongest setting with an accuracy "
             f"drop <= {summary['max_drop'] * 100:g} points.", "",
             "| sweep | defense | params | accuracy | AUC | flip rate | chosen |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["records"]:
        params = ", ".join(f"{k}={r[k]:g}" for k in ("nu", "m", "n") if k in r)
        pick = summary["chosen"].get(r["sweep"])
        mark = "*" if pick == r else ""
        lines.append(f"| {r['sweep']} | {r['defense']} | {params or '-'} | {r['accuracy']:.4f} | {r['auc']:.4f} | "
                     f"{r['flip_rate']:.4f} | {mark} |")
    return "\n".join(lines) + "\n"
