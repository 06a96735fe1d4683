"""The white-box report: Markdown tables (as the thesis's Tables 3-3..3-6), the robust-accuracy-vs-eps
plot and an adversarial image grid, all rendered from the records."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medshield.evaluation.whitebox import worst_case
from medshield.report.grids import adversarial_grid
from medshield.report.plots import line_plot
from medshield.report.tables import markdown_table, percent, pivot_table

PCT = {k: percent for k in ("clean_accuracy", "robust_accuracy", "success_rate", "sensitivity", "specificity",
                            "directions.disease_to_normal.flip_rate", "directions.normal_to_disease.flip_rate")}
MAIN = [("run", "run"), ("attack", "attack"), ("eps_label", "eps"), ("norm", "norm"), ("clean_accuracy", "clean acc"),
        ("robust_accuracy", "robust acc"), ("success_rate", "success"), ("sensitivity", "sens. (adv)"),
        ("specificity", "spec. (adv)"), ("mean_linf", "mean L∞"), ("mean_l2", "mean L2"), ("seconds", "s")]
WORST = [("run", "run"), ("eps_label", "eps"), ("norm", "norm"), ("clean_accuracy", "clean acc"),
         ("robust_accuracy", "worst-case robust acc"), ("strongest_attack", "strongest attack"),
         ("strongest_robust_accuracy", "its robust acc")]
DIRS = [("run", "run"), ("attack", "attack"), ("eps_label", "eps"),
        ("directions.disease_to_normal.flip_rate", "disease→normal (missed diagnosis)"),
        ("directions.disease_to_normal.clean_correct", "n"),
        ("directions.normal_to_disease.flip_rate", "normal→disease (fraud)"),
        ("directions.normal_to_disease.clean_correct", "n")]


def whitebox_markdown(records: list[dict[str, Any]]) -> str:
    fmts = {**PCT, "mean_linf": lambda v: f"{255 * v:.2f}/255", "mean_l2": ".3f", "seconds": ".1f"}
    parts = ["## White-box attacks\n", markdown_table(records, MAIN, fmts)]
    if any(r.get("directions") for r in records):
        parts += ["\n## Clinical direction (flip rate among correctly classified images of the source class)\n",
                  markdown_table(records, DIRS, fmts)]
    if len({r["run"] for r in records}) > 1:
        rows = [{**r, "col": f"{r['run']} ({r.get('channels', '?')}ch)"} for r in records]
        parts += ["\n## Robust accuracy side by side (e.g. grey vs RGB)\n",
                  pivot_table(rows, ["attack", "eps_label"], "col", "robust_accuracy", fmt=percent,
                              row_headers=["attack", "eps"])]
    if len({r["attack"] for r in records}) > 1:
        worst = worst_case(records)
        parts += ["\n## Worst case over the attacks run (an image is robust only if every attack failed on it)\n",
                  markdown_table(worst, WORST, {**PCT, "strongest_robust_accuracy": percent})]
    failed = sorted({f"{r['run']}: {name}: {c['detail']}" for r in records for name, c in r.get("checks", {}).items() if not c["ok"]})
    parts += ["\n## Sanity checks\n", "\n".join(f"- FAILED {f}" for f in failed) + "\n" if failed else "All checks passed.\n"]
    return "".join(parts)


def write_whitebox_report(records: list[dict[str, Any]], out: Path,
                          examples: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """``whitebox.md``, ``robust_vs_eps.png`` and (when stored grid examples are given) ``grid.png`` of
    the first run in ``out``; all from records and stored images."""
    (out / "whitebox.md").write_text(whitebox_markdown(records))
    multi = len({r["run"] for r in records}) > 1
    line_plot(records, "eps", "robust_accuracy", ["run", "attack"] if multi else "attack", out / "robust_vs_eps.png",
              xlabel="eps (x/255)", ylabel="robust accuracy", x_scale=255, baseline="clean_accuracy",
              title="Robust accuracy vs perturbation budget")
    if examples:
        run, ex = next(iter(examples.items()))
        draw_grid(ex, out / "grid.png", run)


def draw_grid(examples: Mapping[str, Any], path: Path, run: str) -> Path:
    """The adversarial grid from stored examples (see :func:`medshield.evaluation.whitebox.grid_examples`:
    images the model classified correctly before the attack, successful adversarials first)."""
    def t(key: str) -> torch.Tensor:
        return torch.as_tensor(examples[key])

    return adversarial_grid(t("original"), t("adversarial"), t("clean_probs"), t("adv_probs"), path,
                            class_names=examples.get("class_names") or None, true_labels=t("labels"),
                            title=f"{run}: {str(examples['attack']).upper()} at {255 * examples['eps']:g}/255 per pixel\n"
                                  f"only images the model classified correctly before the attack")
