"""Defense x attack records (thesis Tables 4-1 to 4-3) with an honest-evaluation gap.

Every defended model is evaluated with the attack it was trained on *and* with others (PGD with
restarts included); ``strongest_*`` and ``gap`` say how much weaker the model is against the
strongest attack than against its training attack, so no defense looks stronger than it is.
"""

from __future__ import annotations

from typing import Any

from medshield.types import eps_label

EVAL_ATTACKS: tuple[str, ...] = ("fgsm", "bim", "mifgsm", "pgd")
"""The attacks a defended model is evaluated with by default."""


def defense_label(spec: dict[str, Any]) -> str:
    """``ant(mifgsm 2/255)``, ``at(pgd 8/255)``, ``noise``, ``none``: the training eps is part of the
    name, so models hardened at different budgets never share a row."""
    name, attack, eps = spec["defense"], spec.get("train_attack"), spec.get("train_eps")
    if not attack:
        return name
    return f"{name}({attack} {eps_label(eps)})" if eps is not None else f"{name}({attack})"


def unique_labels(runs: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """One label per defended run ``(name, records)`` by :func:`defense_label`; runs whose labels
    collide (same defense, different model or seed) get their run name appended."""
    labels = [defense_label(recs[0]) if recs else name for name, recs in runs]
    return [label if labels.count(label) == 1 else f"{label} [{name}]" for (name, _), label in zip(runs, labels)]


def defense_records(whitebox: list[dict[str, Any]], spec: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per (eval attack, eps) from a defended run's white-box records."""
    label = defense_label(spec)
    out = []
    for rec in whitebox:
        out.append({
            "defense": spec["defense"], "label": label, "train_attack": spec.get("train_attack"),
            "train_eps": spec.get("train_eps"), "source": spec.get("source"), "model": rec.get("model"),
            "eval_attack": rec["attack"], "eps": rec["eps"], "eps_label": rec.get("eps_label"), "norm": rec.get("norm"),
            "clean_accuracy": rec["clean_accuracy"], "robust_accuracy": rec["robust_accuracy"],
            "success_rate": rec.get("success_rate"), "robust_sensitivity": rec.get("robust_sensitivity"),
            "robust_specificity": rec.get("robust_specificity"), "test_auc": metrics["test"]["auc"],
            "train_seconds": metrics["train_seconds"],
        })
    return add_gaps(out)


def add_gaps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defense label, eps): the strongest attack, its robust accuracy, and the gap to the
    training attack's robust accuracy (``None`` when the training attack was not evaluated)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["label"], rec["eps"]), []).append(rec)
    for recs in groups.values():
        strongest = min(recs, key=lambda r: r["robust_accuracy"])
        trained = next((r for r in recs if r["eval_attack"] == r.get("train_attack")), None)
        for rec in recs:
            rec["strongest_attack"] = strongest["eval_attack"]
            rec["strongest_robust_accuracy"] = strongest["robust_accuracy"]
            rec["gap"] = (trained["robust_accuracy"] - strongest["robust_accuracy"]) if trained else None
    return records


def gap_statements(records: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: training-attack vs strongest-attack robust accuracy per defense and eps."""
    seen, lines = set(), []
    for rec in records:
        key = (rec["label"], rec["eps"])
        if key in seen:
            continue
        seen.add(key)
        eps = rec.get("eps_label") or f"{rec['eps']:.4g}"
        if rec.get("gap") is None:
            lines.append(f"{rec['label']} at eps {eps}: strongest attack {rec['strongest_attack']} leaves "
                         f"{100 * rec['strongest_robust_accuracy']:.1f}% accuracy (clean {100 * rec['clean_accuracy']:.1f}%).")
            continue
        trained = rec["strongest_robust_accuracy"] + rec["gap"]
        lines.append(f"{rec['label']} at eps {eps}: {100 * trained:.1f}% against its training attack "
                     f"{rec['train_attack']}, {100 * rec['strongest_robust_accuracy']:.1f}% against the strongest "
                     f"({rec['strongest_attack']}): a gap of {100 * rec['gap']:.1f} points.")
    return lines
