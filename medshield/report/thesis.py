"""The thesis reproduction tables (``OUT/thesis.md`` and ``thesis.html``), rendered from ``thesis.json``:
one table per chapter with the thesis's published figure beside ours and whether they compare."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medshield.report.document import Paragraph, Section, Table, render_html, render_markdown

L2_NOTE = ("The thesis's L2 distances are measured on 224x224x3 images in its own pixel scale; ours on the images "
           "we attack, in [0, 1] (28x28x1 in the quick preset: 1/192 as many values). Absolute L2 values are "
           "therefore not comparable. The ratio rows (one attack's or defense's distance over another's, on the "
           "same images) cancel the pixel scale but still depend on the input dimension, so they compare roughly.")
CHAPTERS = {3: "Attacks on diagnosis models (white-box)", 4: "Training-time defenses (AT, ANT)",
            5: "Decision-based black-box attacks", 6: "Black-box defenses (RND, DND)"}
INTRO = {
    3: "Clean accuracy of the two architectures (Table 3-3) and their robust accuracy under white-box attacks "
       "(Table 3-4). The thesis's FGSM is its Algorithm 1 (iterative FGSM stopping at the first flip): ours is "
       "fgsm_iter.",
    4: "Robust accuracy of the undefended DenseNet-121 and of its adversarial training (AT) and adversarial noise "
       "training (ANT) fine-tunes, under FGSM (Algorithm 1) and MI-FGSM (Table 4-3, chest X-rays). As in the "
       "thesis, the adversarial training set comes once from the pre-trained model.",
    5: "Mean L2 distance of the adversarial found by each label-only attack within 10K queries (Table 5-4). " + L2_NOTE,
    6: "Mean L2 distance GBBA reaches within 20K queries against the undefended model and the randomised "
       "defenses RND and DND (Table 6-3): a larger distance means a stronger defense. " + L2_NOTE,
}


ROLES = {"resnet": "ResNet-50", "densenet": "DenseNet-121"}


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3g}"


NAMES = {"mifgsm": "MI-FGSM", "fgsm": "FGSM", "fgsm_iter": "FGSM (Algorithm 1)", "hsja": "HSJA", "gbba": "GBBA",
         "opt": "OPT", "none": "none",
         "rnd": "RND", "dnd": "DND", "at": "AT", "ant": "ANT"}


def name(key: str | None) -> str:
    return NAMES.get(key or "", (key or "").upper())


def what_text(rec: dict[str, Any]) -> str:
    """The row's quantity in words: ``robust acc., MI-FGSM``, ``mean L2, GBBA vs RND @ 20,000 q``."""
    if rec["quantity"] == "l2_ratio":
        return f"L2 ratio {rec['label']} @ {rec['budget']:,} q"
    if rec["quantity"] == "mean_l2":
        return f"mean L2, {name(rec['attack'])} vs {name(rec['defense'])} @ {rec['budget']:,} q"
    if rec["quantity"] == "clean_accuracy":
        return "clean accuracy"
    defense = f", {name(rec['defense'])}" if rec.get("defense") not in (None, "none") else \
        (", no defense" if rec.get("defense") == "none" else "")
    return f"robust acc., {name(rec['attack'])}{defense}"


def chapter_table(chapter: int, records: list[dict[str, Any]]) -> Table:
    rows = [[rec["table"] or f"ch. {chapter}", rec["dataset"], rec["model"] or "–", what_text(rec),
             value_text(rec["thesis"], rec["unit"]), value_text(rec["ours"], rec["unit"]), rec["comparable"],
             rec.get("note", "")] for rec in records]
    return Table(["thesis table", "thesis dataset", "thesis model", "quantity", "thesis", "ours", "comparable?", "ours is"],
                 rows, f"Chapter {chapter}: the thesis's published figures beside ours")


def datasets_section(result: dict[str, Any], out: Path) -> Section:
    rows = []
    for d in result["datasets"]:
        models = ", ".join(f"{m['architecture']} as {ROLES.get(role, role)}" for role, m in d["models"].items())
        rel = os.path.relpath(Path(d["report"]).resolve(), out.resolve())
        rows.append([d["dataset"], "run", d["description"], models, rel])
    rows += [[s["dataset"], "skipped", s["reason"], "–", "–"] for s in result["skipped"]]
    return Section("Datasets and models", [
        Paragraph(f"Preset {result['preset']}: {result['description']}. White-box robust accuracies are read at "
                  f"eps {result['eps'] * 255:.3g}/255 per pixel. Each dataset's full audit report (every attack, eps, "
                  f"budget and defense, with figures) is linked below; every number here comes from thesis.json."),
        Table(["dataset", "status", "what", "our models", "audit report"], rows, "What ran"),
    ])


def sections(result: dict[str, Any], out: Path) -> list[Section]:
    secs = [datasets_section(result, out)]
    for chapter, title in CHAPTERS.items():
        recs = [r for r in result["records"] if r["chapter"] == chapter]
        if recs:
            secs.append(Section(f"Chapter {chapter}: {title}", [Paragraph(INTRO[chapter]), chapter_table(chapter, recs)]))
    return secs


def write_thesis_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``OUT/thesis.html`` (self-contained) and ``OUT/thesis.md``."""
    out = Path(out)
    title = "MedShield: the thesis's experiments reproduced"
    meta = f"preset {result['preset']} · data {result['data_dir']}"
    secs = sections(result, out)
    return render_html(title, secs, out / "thesis.html", meta), render_markdown(title, secs, out / "thesis.md", meta)
