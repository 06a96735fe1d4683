"""The thesis reproduction tables (``OUT/thesis.md`` and ``thesis.html``), rendered from ``thesis.json``:
one section per chapter with every row of the thesis's Tables 3-3..6-3 on its three datasets, the
published figure (or "not transcribed" where the project has none) beside ours and whether they compare."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medshield.report.document import Paragraph, Section, Table, render_html, render_markdown

NOT_TRANSCRIBED = "—, not transcribed"
L2_NOTE = ("The thesis's L2 distances are measured on 224x224x3 images in its own pixel scale; ours on the images "
           "we attack, in [0, 1] (28x28x1 in the quick preset, 64x64x1 in mid). Absolute L2 values are therefore "
           "not comparable. Ours are the distances of verified adversarials (they fool the undefended classifier), "
           "never the attacker's claims. The ratio rows (one attack's or defense's distance over another's, on the "
           "same images) cancel the pixel scale but still depend on the input dimension, so they compare roughly.")
CHAPTERS = {3: "Attacks on diagnosis models (white-box)", 4: "Training-time defenses (AT, ANT, noise)",
            5: "Decision-based black-box attacks", 6: "Black-box defenses (RND, DND)"}
INTRO = {
    3: "Clean accuracy of the two architectures (Table 3-3), their robust accuracy under white-box attacks "
       "(Table 3-4) and under MI-FGSM adversarials made on the other architecture (transfer, Tables 3-5/3-6). "
       "The thesis's FGSM is its Algorithm 1 (iterative FGSM stopping at the first flip): ours is fgsm_iter.",
    4: "Robust accuracy of the undefended DenseNet-121 and of its adversarial training (AT) and adversarial noise "
       "training (ANT) fine-tunes under FGSM (Algorithm 1) and MI-FGSM (Tables 4-1 CT, 4-2 breast, 4-3 chest), "
       "and of noise-only training (Tables 4-4/4-5). As in the thesis, the adversarial training set comes once from "
       "the pre-trained model; on CT AT trains on MI-FGSM and ANT on FGSM.",
    5: "Mean L2 distance of the adversarial each label-only attack finds within each query budget "
       "(Tables 5-2 CT, 5-3 breast, 5-4 chest; one row for the thesis, one for ours). " + L2_NOTE,
    6: "Mean L2 distance GBBA reaches against the undefended model and the randomised defenses RND and DND "
       "(Tables 6-1 CT, 6-2 breast, 6-3 chest): a larger distance means a stronger defense. " + L2_NOTE,
}
ROLES = {"resnet": "ResNet-50", "densenet": "DenseNet-121"}
NAMES = {"mifgsm": "MI-FGSM", "fgsm": "FGSM", "fgsm_iter": "FGSM (Algorithm 1)", "hsja": "HSJA", "gbba": "GBBA",
         "opt": "OPT", "none": "none", "rnd": "RND", "dnd": "DND", "at": "AT", "ant": "ANT", "noise": "noise"}


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3g}"


def thesis_text(rec: dict[str, Any]) -> str:
    """The published figure, or that the project has not transcribed it."""
    return NOT_TRANSCRIBED if rec["thesis"] is None else value_text(rec["thesis"], rec["unit"])


def name(key: str | None) -> str:
    return NAMES.get(key or "", (key or "").upper())


def what_text(rec: dict[str, Any]) -> str:
    """The row's quantity in words: ``robust acc., MI-FGSM``, ``mean L2, GBBA vs RND @ 20,000 q``."""
    if rec["quantity"] == "l2_ratio":
        return f"L2 ratio {rec['label']} @ {rec['budget']:,} q"
    if rec["quantity"] == "mean_l2":
        return f"mean L2, {name(rec['attack'])} vs {name(rec['defense'])}"
    defense = f", {name(rec['defense'])}" if rec.get("defense") not in (None, "none") else \
        (", no defense" if rec.get("defense") == "none" else "")
    if rec["quantity"] == "clean_accuracy":
        return "clean accuracy" + defense
    if rec["quantity"] == "transfer_accuracy":
        return f"transfer robust acc., {name(rec['attack'])}"
    return f"robust acc., {name(rec['attack'])}{defense}"


def chapter_table(chapter: int, records: list[dict[str, Any]]) -> Table:
    rows = [[rec["table"] or f"ch. {chapter}", rec["dataset"], rec["model"] or "–", what_text(rec),
             thesis_text(rec), value_text(rec["ours"], rec["unit"]), rec["comparable"],
             rec.get("note", "")] for rec in records]
    return Table(["thesis table", "thesis dataset", "thesis model", "quantity", "thesis", "ours", "comparable?", "ours is"],
                 rows, f"Chapter {chapter}: the thesis's figures beside ours")


def _l2_cell(rec: dict[str, Any] | None, who: str) -> str:
    if rec is None:
        return ""
    if who == "thesis":
        return value_text(rec["thesis"], "L2") if rec["thesis"] is not None else "—"
    if "success_rate" not in rec:
        return "–"
    n = rec["n_images"]
    return f"{value_text(rec['ours'], 'L2')} ({round(n * rec['success_rate'])}/{n})"


def l2_table(chapter: int, records: list[dict[str, Any]]) -> Table:
    """Chapters 5 and 6 as the thesis lays them out: one row per table x attack x defense, budgets as columns,
    a thesis row ("—": not transcribed here) above ours ("L2 (verified/attacked images)")."""
    budgets = sorted({r["budget"] for r in records})
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["table"], rec["dataset"], rec["attack"], rec["defense"]), {})[rec["budget"]] = rec
    rows = []
    for (table, dataset, attack, defense), by_budget in groups.items():
        first = next(iter(by_budget.values()))
        for who in ("thesis", "ours"):
            published = any(r["thesis"] is not None for r in by_budget.values())
            label = ("thesis" if published else "thesis: not transcribed") if who == "thesis" else \
                "ours: " + first.get("our_model", "not run")
            rows.append([table, dataset, f"{name(attack)} vs {name(defense)}", label,
                         *(_l2_cell(by_budget.get(b), who) for b in budgets),
                         first["comparable"] if who == "ours" else ""])
    return Table(["thesis table", "thesis dataset", "attack vs defense", "row", *(f"{b // 1000}K" for b in budgets),
                  "comparable?"], rows, f"Chapter {chapter}: mean L2 by query budget, the thesis's beside ours")


def datasets_section(result: dict[str, Any], out: Path) -> Section:
    rows = []
    for d in result["datasets"]:
        models = ", ".join(f"{m['architecture']} as {ROLES.get(role, role)}"
                           + (f" ({m['epochs']} epochs)" if "epochs" in m else "") for role, m in d["models"].items())
        rel = os.path.relpath(Path(d["report"]).resolve(), out.resolve())
        rows.append([d["dataset"], "run", d["description"], d.get("input", "–"), d.get("pretraining", "–"), models, rel])
    rows += [[s["dataset"], "skipped", s["reason"], "–", "–", "–", "–"] for s in result["skipped"]]
    return Section("Datasets and models", [
        Paragraph(f"Preset {result['preset']}: {result['description']}. White-box robust accuracies are read at "
                  f"eps {result['eps'] * 255:.3g}/255 per pixel. Each dataset's full audit report (every attack, eps, "
                  f"budget and defense, with figures) is linked below; every number here comes from thesis.json. "
                  f"A thesis value reading \"{NOT_TRANSCRIBED}\" is reported in the thesis but its number is not "
                  f"in this project (only the figures in THESIS_NUMBERS are); ours is filled all the same."),
        Table(["dataset", "status", "what", "input (thesis 224x224x3)", "pre-training", "our models", "audit report"],
              rows, "What ran"),
    ])


def sections(result: dict[str, Any], out: Path) -> list[Section]:
    secs = [datasets_section(result, out)]
    for chapter, title in CHAPTERS.items():
        recs = [r for r in result["records"] if r["chapter"] == chapter]
        if not recs:
            continue
        l2 = [r for r in recs if r["quantity"] == "mean_l2"]
        rest = [r for r in recs if r["quantity"] != "mean_l2"]
        blocks: list[Any] = [Paragraph(INTRO[chapter])]
        if l2:
            blocks.append(l2_table(chapter, l2))
        if rest:
            blocks.append(chapter_table(chapter, rest))
        secs.append(Section(f"Chapter {chapter}: {title}", blocks))
    return secs


def write_thesis_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``OUT/thesis.html`` (self-contained) and ``OUT/thesis.md``."""
    out = Path(out)
    title = "MedShield: the thesis's experiments reproduced"
    meta = f"preset {result['preset']} · data {result['data_dir']}"
    secs = sections(result, out)
    return render_html(title, secs, out / "thesis.html", meta), render_markdown(title, secs, out / "thesis.md", meta)
