"""What an inference-time defense costs on clean inputs: accuracy, AUC, prediction flip rate.

The thesis reports only robustness; users also need to know how often the noisy model changes a
clean diagnosis. ``flip_rate`` is the fraction of clean queries whose defended label differs from
the undefended model's label, averaged over ``repeats`` passes over the split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medshield.data import Dataset
from medshield.defenses.inference import NO_DEFENSE, DefenseSpec
from medshield.models.metrics import point_metrics
from medshield.models.bounded import predict, predict_labels, probabilities


def defended_clean_metrics(model: nn.Module, ds: Dataset, defense: DefenseSpec, split: str = "test",
                           repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Clean accuracy/AUC of ``defense.build(model)`` (mean over repeats) and flip rate; the record
    carries the defense's name and every parameter."""
    part = ds.split(split)
    out = defended_metrics(model, part.images(), part.labels, ds.positive_class, defense, repeats, seed)
    return {"defense": defense.name, **defense.resolved(), "split": split, **out}


def defended_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, positive_class: int | None,
                     defense: DefenseSpec, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """``repeats``, ``accuracy``, ``auc`` (means over repeated noisy passes) and ``flip_rate`` of the
    defended model on images ``x`` with labels ``y`` (one pass when ``defense`` is ``none``)."""
    clean_labels = predict_labels(predict(model, x))
    wrapped = defense.build(model, seed=seed)
    accs, aucs, flips = [], [], []
    for _ in range(repeats if not defense.is_none else 1):
        logits = predict(wrapped, x)
        m = point_metrics(y.numpy(), probabilities(logits).numpy(), positive_class)
        accs.append(m["accuracy"])
        aucs.append(m["auc"])
        flips.append(float((predict_labels(logits) != clean_labels).float().mean()))
    return {"repeats": len(accs), "accuracy": sum(accs) / len(accs), "auc": sum(aucs) / len(aucs),
            "flip_rate": sum(flips) / len(flips)}


def tradeoff_curve(model: nn.Module, ds: Dataset, grid: dict[str, list[dict[str, float]]],
                   split: str = "test", repeats: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Clean metrics for each defense setting in ``grid`` (e.g. ``{"rnd": [{"nu": 0.01}, ...]}``)."""
    records = [defended_clean_metrics(model, ds, NO_DEFENSE, split, 1, seed)]
    for defense, settings in grid.items():
        records += [defended_clean_metrics(model, ds, DefenseSpec.of(defense, **p), split, repeats, seed)
                    for p in settings]
    return records


def pick_parameters(records: list[dict[str, Any]], defense: str, key: str, max_drop: float = 0.02) -> dict[str, Any] | None:
    """The strongest setting of ``defense`` (largest ``key``) whose clean accuracy drop is <= ``max_drop``."""
    base = next(r["accuracy"] for r in records if r["defense"] == "none")
    ok = [r for r in records if r["defense"] == defense and base - r["accuracy"] <= max_drop]
    return max(ok, key=lambda r: r[key]) if ok else None


SWEEPS = {"rnd_nu": ("rnd", "nu"), "dnd_m": ("dnd", "m"), "dnd_n": ("dnd", "n")}
"""Trade-off sweeps: name -> (defense, swept parameter)."""


def tradeoff_sweeps(model: nn.Module, ds: Dataset, nu_grid: list[float], m_grid: list[float], n_grid: list[float],
                    n_fixed: float = 0.5, m_fixed: float = 0.01, split: str = "test", repeats: int = 3,
                    seed: int = 0, max_drop: float = 0.02) -> dict[str, Any]:
    """Clean accuracy and flip rate vs noise level: RND over ``nu_grid``, DND over ``m_grid`` (``n``
    fixed at ``n_fixed``) and over ``n_grid`` (``m`` fixed at ``m_fixed``). Each record carries its
    ``sweep``; ``chosen`` holds, per sweep, the strongest setting within ``max_drop`` of the undefended
    accuracy (:func:`pick_parameters`), the operating point to use."""
    base = defended_clean_metrics(model, ds, NO_DEFENSE, split, 1, seed)
    settings = {"rnd_nu": [{"nu": v} for v in nu_grid], "dnd_m": [{"m": v, "n": n_fixed} for v in m_grid],
                "dnd_n": [{"m": m_fixed, "n": v} for v in n_grid]}
    records, chosen = [{**base, "sweep": "none"}], {}
    for sweep, grid in settings.items():
        defense, key = SWEEPS[sweep]
        recs = [{**defended_clean_metrics(model, ds, DefenseSpec.of(defense, **p), split, repeats, seed), "sweep": sweep}
                for p in grid]
        records += recs
        chosen[sweep] = pick_parameters([base, *recs], defense, key, max_drop)
    return {"records": records, "chosen": chosen, "max_drop": max_drop, "split": split, "repeats": repeats,
            "n_fixed": n_fixed, "m_fixed": m_fixed, "undefended_accuracy": base["accuracy"]}
