"""Calibrated noise defenses in the report: the clean-cost curve each calibration searched (accuracy and
sensitivity drop on the validation split vs the noise level), the tolerance, the chosen point and its
cost on the test split; plus a table of the chosen settings. All from calibration records
(:func:`medshield.evaluation.calibration.calibrate_inference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medshield.report.blackbox_plots import _pyplot
from medshield.report.document import Figure, Paragraph, Section, Table, Verdict


def _title(rec: dict[str, Any]) -> str:
    tied = ", ".join(f"{k} = {r:g}·{rec['searched']}" for k, r in rec.get("tied", {}).items())
    fixed = ", ".join(f"{k} = {v:g}" for k, v in rec.get("fixed", {}).items())
    extra = f" ({tied or fixed})" if tied or fixed else ""
    return f"{rec.get('run', '')} {rec['defense'].upper()}: {rec['searched']}{extra}".strip()


def plot_calibration(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per calibration: validation accuracy and sensitivity drop (points, ±1 SE) vs the
    searched parameter (log scale); dotted lines at the tolerance; the star is the chosen setting,
    the diamonds its drops on the test split (±1 SE)."""
    plt = _pyplot()
    n = max(len(records), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, rec in zip(axes.flat, records):
        curve = rec["curve"]
        xs = [p["value"] for p in curve]
        for key, color, label in (("accuracy", "C0", "accuracy"), ("sensitivity", "C3", "sensitivity")):
            ys = [100 * p[f"{key}_drop"] for p in curve]
            es = [100 * p[f"{key}_drop_se"] for p in curve]
            ax.errorbar(xs, ys, yerr=es, fmt="-o", color=color, ms=3, lw=1, capsize=2, label=f"{label} drop (val)")
            ax.axhline(100 * rec["tolerance"][key], color=color, ls=":", lw=1)
            chosen = rec["validation"]
            ax.plot([rec["value"]], [100 * chosen[f"{key}_drop"]], "*", color="k", ms=11)
            if "test" in rec:
                t = rec["test"]
                ax.errorbar([rec["value"]], [100 * t[f"{key}_drop"]], yerr=[100 * t[f"{key}_drop_se"]], fmt="D",
                            color=color, mfc="white", ms=5, capsize=3, label=f"{label} drop (test, chosen)")
        ax.axvline(rec["value"], color="k", lw=0.8, alpha=0.5)
        ax.set_xscale("log")
        ax.set_title(f"{_title(rec)}\nchosen {rec['searched']} = {rec['value']:g}", fontsize=8)
        ax.set_xlabel(rec["searched"])
        ax.set_ylabel("clean drop (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(records):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def calibration_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Table headers and rows: chosen parameters, tolerance, validation and test drops (± SE)."""
    def drop(cost: dict[str, Any] | None, key: str) -> str:
        if not cost:
            return "–"
        return f"{100 * cost[f'{key}_drop']:.2f} ± {100 * cost[f'{key}_drop_se']:.2f}"

    headers = ["run", "defense", "chosen", "tolerance (acc / sens, points)", "val acc drop", "val sens drop",
               "test acc drop", "test sens drop", "next step (exceeds)"]
    rows = []
    for r in records:
        params = ", ".join(f"{k}={v:g}" for k, v in r["params"].items())
        if not r.get("feasible", True):
            params += " (no noise level fits)"
        tol = f"{100 * r['tolerance']['accuracy']:g} / {100 * r['tolerance']['sensitivity']:g}"
        nxt = "–" if r.get("next_value") is None else f"{r['searched']}={r['next_value']:g}"
        rows.append([r.get("run", ""), r["defense"], params, tol, drop(r["validation"], "accuracy"),
                     drop(r["validation"], "sensitivity"), drop(r.get("test"), "accuracy"),
                     drop(r.get("test"), "sensitivity"), nxt])
    return headers, rows


def calibration_markdown(records: list[dict[str, Any]]) -> str:
    """The calibration table as Markdown (drops in points, ± one standard error)."""
    headers, rows = calibration_rows(records)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _l2_ratio(res: dict[str, Any], rec: dict[str, Any]) -> str:
    """' and multiplies ATTACK's median L2 at B queries by R' from the audit's black-box records, if any."""
    bb = [r for r in res.get("blackbox", []) if r.get("run") == rec.get("run")]
    if not bb:
        return ""
    top = max(r["budget"] for r in bb)
    parts = []
    for r in bb:
        if r["budget"] != top or r.get("defense_spec") != rec.get("spec_label"):
            continue
        base = next((u for u in bb if u["budget"] == top and u["attack"] == r["attack"] and u["defense"] == "none"), None)
        if base and base.get("median_l2") and r.get("median_l2"):
            parts.append(f"{r['attack'].upper()} ×{r['median_l2'] / base['median_l2']:.1f}")
    return f"; median L2 of the attacker's adversarial at {top:,} queries vs undefended: {', '.join(parts)}" if parts else ""


def calibration_section(res: dict[str, Any], figures: dict[str, Path]) -> Section | None:
    """The audit's calibrated defenses: one verdict each (chosen setting, tolerance, validation and test
    cost), the table and the trade-off figure."""
    recs = res.get("calibrations") or []
    if not recs:
        return None
    blocks: list[Any] = [Paragraph(
        "Noise defenses given without parameters are calibrated: the largest noise whose cost on the validation "
        "split stays within the tolerance (accuracy and sensitivity drop), found by bisection over the noise level "
        "with a fixed seed; the same setting is then measured on the test split. Drops are in points, ± one "
        "paired standard error (images and noise).")]
    for r in recs:
        tol, t = r["tolerance"], r.get("test")
        params = ", ".join(f"{k} = {v:g}" for k, v in r["params"].items())
        test = "" if not t else (f"; on the test split it costs {100 * t['accuracy_drop']:.1f} ± {100 * t['accuracy_drop_se']:.1f} "
                                 f"points of accuracy and {100 * t['sensitivity_drop']:.1f} ± {100 * t['sensitivity_drop_se']:.1f} "
                                 f"of sensitivity")
        if not r.get("feasible", True):
            blocks.append(Verdict(f"{r.get('run', '')}: no {r['defense'].upper()} noise level keeps the validation cost within "
                                  f"{100 * tol['accuracy']:g} point(s) of accuracy and {100 * tol['sensitivity']:g} of "
                                  f"sensitivity: the defense is evaluated with {params}.", "medium"))
            continue
        within = t is None or (t["accuracy_drop"] <= tol["accuracy"] + t["accuracy_drop_se"]
                               and t["sensitivity_drop"] <= tol["sensitivity"] + t["sensitivity_drop_se"])
        blocks.append(Verdict(
            f"{r.get('run', '')}: {r['defense'].upper()} is evaluated calibrated ({params}), the strongest noise within "
            f"{100 * tol['accuracy']:g} point(s) of accuracy and {100 * tol['sensitivity']:g} of sensitivity on the "
            f"validation split{test}{_l2_ratio(res, r)}.", "low" if within else "medium"))
    headers, rows = calibration_rows(recs)
    blocks.append(Table(headers, rows, "Calibrated defenses: chosen setting and clean cost (points ± SE)"))
    if "calibration" in figures:
        blocks.append(Figure(figures["calibration"], "Clean cost vs noise level on the validation split (dotted: "
                                                     "tolerance; star: chosen; diamonds: its cost on the test split)"))
    return Section("Calibrated defenses (clinical tolerance)", blocks)
