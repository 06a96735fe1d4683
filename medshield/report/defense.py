"""Defense report: defense x attack table, grouped bars (thesis Fig. 4-5), training curves (Fig. 4-6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medshield.evaluation.defense import gap_statements
from medshield.report.plots import plt
from medshield.report.tables import percent, pivot_table


def _eps_key(rec: Mapping[str, Any]) -> Any:
    return rec.get("eps_label") or rec["eps"]


def defense_bars(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars: robust accuracy per eval attack (plus clean), one group per defense, one panel
    per evaluation eps."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    attacks = ["clean", *dict.fromkeys(r["eval_attack"] for r in records)]
    eps_values = list(dict.fromkeys(_eps_key(r) for r in records))
    width = 0.8 / len(attacks)
    fig, axes = plt.subplots(len(eps_values), 1, figsize=(1.6 * len(labels) + 3, 3.6 * len(eps_values)), dpi=120,
                             squeeze=False)
    xs = np.arange(len(labels))
    for ax, eps in zip(axes[:, 0], eps_values):
        recs = [r for r in records if _eps_key(r) == eps]
        value = {(r["label"], r["eval_attack"]): r["robust_accuracy"] for r in recs}
        value |= {(r["label"], "clean"): r["clean_accuracy"] for r in recs}
        for i, atk in enumerate(attacks):
            ax.bar(xs + i * width, [100 * value.get((lab, atk), np.nan) for lab in labels], width, label=atk)
        ax.set_xticks(xs + width * (len(attacks) - 1) / 2, labels)
        ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=f"eval eps {eps}")
        ax.legend(fontsize=8, ncol=min(len(attacks), 5))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Validation accuracy and training loss per epoch for each defense."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for label, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        acc.plot(epochs, [100 * h["val_accuracy"] for h in hist], marker="o", label=label)
        loss.plot(epochs, [h["train_loss"] for h in hist], marker="o", label=label)
    acc.set(xlabel="epoch", ylabel="validation accuracy (%)")
    loss.set(xlabel="epoch", ylabel="training loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_defense_report(records: list[dict[str, Any]], histories: Mapping[str, Sequence[Mapping[str, Any]]],
                         out: Path) -> None:
    by_eps = dict.fromkeys(_eps_key(r) for r in records)
    parts = ["# White-box defenses", ""]
    for eps in by_eps:
        recs = [r for r in records if _eps_key(r) == eps]
        rows = [{"label": r["label"], "attack": "clean", "acc": r["clean_accuracy"]} for r in recs]
        rows += [{"label": r["label"], "attack": r["eval_attack"], "acc": r["robust_accuracy"]} for r in recs]
        parts += [f"## Accuracy under attack, eps {eps}", "", pivot_table(rows, ["label"], "attack", "acc",
                                                                         fmt=percent, row_headers=["defense"])]
    parts += ["## Honest evaluation: training attack vs strongest attack", ""]
    parts += [f"- {line}" for line in gap_statements(records)]
    (out / "defense.md").write_text("\n".join(parts) + "\n")
    defense_bars(records, out / "defense_bars.png")
    if histories:
        training_curves(histories, out / "training_curves.png")
