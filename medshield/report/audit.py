"""The audit report, rendered from ``audit.json`` into ``report.html`` (self-contained), ``report.md``,
``report.pdf`` and ``findings.json``.

Order: the executive summary (``id="summary"``: one rated row per threat and model, the overall
rating, what was not tested), the findings per model (evidence, clinical direction, remedy, images),
the detailed results, the regulatory evidence annex, and the method. Severities come from
:mod:`medshield.report.severity` (rules in ``docs/audit.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medshield.evaluation.transfer import accuracy_matrix
from medshield.report.defense import defense_bars
from medshield.report.document import (Badge, Bullets, Figure, Link, Paragraph, Section, Table, Verdict, render_html,
                                       render_markdown)
from medshield.report.blackbox_plots import plot_strips
from medshield.report.naming import config_rows, defense_name, defense_names, eps_value
from medshield.report.panels import l2_vs_queries_panels, robust_vs_eps_panels
from medshield.report.pdf import write_pdf
from medshield.report.plots import heatmap
from medshield.report.severity import (LEVELS, RANK, THREATS, WORD, Finding, findings, overall)
from medshield.report.whitebox import draw_grid
from medshield.targets import ref_name
from medshield.report.calibration_plot import calibration_section, plot_calibration


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _label(eps: float) -> str:
    return eps_value(eps)


def _config(res: Mapping[str, Any], section: str) -> dict[str, Any]:
    return dict((res.get("config") or {}).get(section) or {})


def _sample(n: Any, total: Any = None, what: str = "test images") -> str:
    """'n = 200 of 624 test images (seeded subsample)' or 'n = 624 test images (the whole split)'."""
    if n is None:
        return ""
    if total and int(total) > int(n):
        return f"n = {int(n):,} of {int(total):,} {what} (seeded subsample)"
    return f"n = {int(n):,} {what}" + (" (the whole split)" if total else "")


def _split_size(res: Mapping[str, Any], run: str) -> int | None:
    return next((r.get("n") for r in res.get("clean") or [] if r.get("run") == run), None)


# --- details -----------------------------------------------------------------------------------------


def clean_section(res: dict[str, Any]) -> Section:
    rows = [[r["run"], r.get("model", "–"), r.get("dataset", "–"), r["n"], pct(r["accuracy"]), pct(r.get("sensitivity")),
             pct(r.get("specificity")), r.get("auc"),
             "–" if "ci" not in r else f"{pct(r['ci']['accuracy'][0])}–{pct(r['ci']['accuracy'][1])}"]
            for r in res.get("clean") or []]
    return Section("System under test: clean performance", [
        Table(["run", "model", "dataset", "test images", "accuracy", "sensitivity", "specificity", "AUC",
               "accuracy 95% CI"], rows, "Clean performance on the whole split (bootstrap 95% CI)")], anchor="clean",
                   new_page=True)


def whitebox_section(res: dict[str, Any], figures: dict[str, Path]) -> Section:
    recs = res["whitebox"]
    eps_list = sorted({r["eps"] for r in recs})
    rows: dict[tuple[str, str], dict[float, Any]] = {}
    sizes: dict[str, Any] = {}
    for r in recs:
        rows.setdefault((r["run"], r["attack"]), {})[r["eps"]] = r["robust_accuracy"]
        sizes[r["run"]] = r.get("n")
    sample = "; ".join(f"{run}: {_sample(n, _split_size(res, run))}" for run, n in sizes.items())
    worst: dict[str, dict[float, dict[str, Any]]] = {}
    for w in res.get("whitebox_worst_case", []):
        worst.setdefault(w["run"], {})[w["eps"]] = w
    table = [[run, atk.upper(), *[pct(v.get(e)) for e in eps_list]] for (run, atk), v in rows.items()]
    table += [[run, "WORST CASE (winner)", *[f"{pct(w[e]['robust_accuracy'])} ({w[e]['strongest_attack']})" if e in w
                                              else "" for e in eps_list]] for run, w in worst.items()]
    blocks: list[Any] = [Table(["run", "attack", *[_label(e) for e in eps_list]], table,
                               f"Robust accuracy under white-box attack (L∞ budget per pixel; worst case: an image "
                               f"counts as robust only if every attack failed on it); {sample}")]
    dir_rows = [[r["run"], r["attack"].upper(), _label(r["eps"]),
                 _dir_cell(r["directions"].get("disease_to_normal")), _dir_cell(r["directions"].get("normal_to_disease"))]
                for r in recs if r.get("directions") and abs(r["eps"] - 2 / 255) < 1e-9]
    if dir_rows:
        blocks.append(Table(["run", "attack", "eps", "disease→normal (missed diagnosis)", "normal→disease (false alarm)"],
                            dir_rows, "Clinical direction at 2/255: flip rate among correctly classified images "
                                      "(flipped / correctly classified of that class)"))
    if "robust_vs_eps" in figures:
        blocks.append(Figure(figures["robust_vs_eps"], f"Robust accuracy vs perturbation budget, one panel per model "
                                                        f"(dashed: clean accuracy); {sample}"))
    return Section("White-box attacks (the attacker knows the model)", blocks, anchor="whitebox")


def _dir_cell(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("flip_rate") is None:
        return "–"
    return f"{pct(d['flip_rate'])} ({d.get('flipped', '?')}/{d.get('clean_correct', '?')})"


def transfer_section(res: dict[str, Any], figures: dict[str, Path]) -> Section | None:
    recs = res.get("transfer") or []
    if not [r for r in recs if not r.get("white_box")]:
        return None
    n = recs[0].get("n")
    sample = _sample(n, _split_size(res, recs[0]["target"]))
    blocks: list[Any] = [Table(["source", "target", "target clean acc", "target acc on source's adversarials",
                                "flipped (of correctly classified)"],
                               [[r["source"] + (" (same model: white-box)" if r.get("white_box") else ""),
                                 r["target"], pct(r["clean_accuracy"]), pct(r["robust_accuracy"]),
                                 pct(r["success_rate"])] for r in recs],
                               f"Transferability ({str(recs[0].get('attack', '')).upper()} at "
                               f"{recs[0].get('eps_label') or _label(recs[0].get('eps', 0))}); {sample}")]
    if "transfer" in figures:
        blocks.append(Figure(figures["transfer"], f"Target accuracy on each source's adversarial images; {sample}"))
    return Section("Transfer attacks (the attacker uses a substitute model)", blocks, anchor="transfer")


def blackbox_section(res: dict[str, Any], figures: dict[str, Path], names: Mapping[str, str]) -> Section | None:
    recs = res.get("blackbox") or []
    if not recs:
        return None
    budgets = sorted({r["budget"] for r in recs})
    by = {(r["run"], r["attack"], r.get("defense_spec", r["defense"]), r["budget"]): r for r in recs}
    rows = []
    for run, attack, spec in dict.fromkeys((r["run"], r["attack"], r.get("defense_spec", r["defense"])) for r in recs):
        cells = [by.get((run, attack, spec, b)) for b in budgets]
        last = next(c for c in reversed(cells) if c)
        rows.append([run, attack.upper(), names.get(spec, defense_name(spec)), pct(last.get("defended_clean_accuracy")),
                     *[f"{c['mean_l2']:.3g} / {c['median_l2']:.3g}" if c and c.get("median_l2") is not None else "–"
                       for c in cells],
                     pct(last.get("success_rate")), pct(last.get("defended_success_rate", last.get("success_rate")))])
    n = recs[0].get("n_images")
    sample = _sample(n, None, "correctly classified test images per attack")
    blocks: list[Any] = [Table(["run", "attack", "defense", "defended clean acc",
                                *[f"{b:,} q mean / median L2" for b in budgets], "fools the model",
                                "fools the defended model (one query)"], rows,
                               f"Label-only attacks: L2 distance of the adversarial the attacker ends with at each query "
                               f"budget; {sample}")]
    for key, cap in (("l2_vs_queries", f"Median L2 vs queries, one panel per model; colour = attack, line style = "
                                       f"defense (solid: none); {sample}"),
                     ("strips", "One image's adversarial at each budget (first model)")):
        if key in figures:
            blocks.append(Figure(figures[key], cap))
    return Section("Black-box attacks (the attacker sees only the label)", blocks, anchor="blackbox")


def detection_section(res: dict[str, Any]) -> Section | None:
    if not res.get("detection"):
        return None
    blocks: list[Any] = []
    for rec in res["detection"]:
        within = rec["config"]["within"]
        blocks.append(Table(["stream", "streams", "flagged", f"within {within:,} queries", "median flagged at"],
                            [[r["kind"], r["n_streams"], pct(r["flagged_fraction"]), pct(r.get(f"flagged_within_{within}")),
                              r.get("flagged_at_median")] for r in rec["records"]],
                            f"{rec['run']}: stream detection (attack streams: one per attacked image, "
                            f"{rec['config'].get('n_images', '?')} images, {rec['config'].get('budget', 0):,} queries each)"))
    return Section("Detection of attack query streams", blocks, anchor="detection")


def defenses_section(res: dict[str, Any], figures: dict[str, Path], names: Mapping[str, str]) -> Section | None:
    recs = res.get("defenses") or []
    if not recs:
        return None
    rows = [[r["base_run"], names.get(r["defense"], r["defense"]), r.get("train_attack") or "–",
             str(r["eval_attack"]).upper(), r.get("eps_label") or _label(r["eps"]), pct(r["clean_accuracy"]),
             pct(r["robust_accuracy"])] for r in recs]
    n = recs[0].get("n") or _config(res, "defenses").get("eval_n")
    blocks: list[Any] = [Table(["model", "defense", "trained on", "evaluated with", "eps", "clean acc", "robust acc"], rows,
                               "Training-time defenses" + (f"; {_sample(n, None)}" if n else ""))]
    if "defense_bars" in figures:
        blocks.append(Figure(figures["defense_bars"], "Accuracy per defense and attack"))
    return Section("Hardening: training-time defenses", blocks, anchor="defenses")


# --- summary, findings, annex ------------------------------------------------------------------------


def _sorted(found: Sequence[Finding]) -> list[Finding]:
    order = list(THREATS)
    return sorted(found, key=lambda f: (-RANK[f.severity], order.index(f.threat) if f.threat in order else 99))


def _where(f: Finding) -> Link:
    return Link({"clean": "clean performance", "whitebox": "white-box", "transfer": "transfer", "blackbox": "black-box",
                 "defenses": "defenses", "detection": "detection"}.get(f.anchor, f.anchor), f"#{f.anchor}")


def not_tested(res: Mapping[str, Any]) -> list[str]:
    """What this audit did not test: threats outside MedShield's scope, disabled sections, limits."""
    cfg = res.get("config") or {}
    out = ["Data or model poisoning and backdoors (the training data and pipeline were not examined).",
           "Model inversion, model stealing and leakage of training data (confidentiality attacks).",
           "Physical-world perturbations (printing, re-scanning), distribution shift and performance drift on "
           "other sites or scanners, and bias across patient subgroups.",
           "Score-based black-box attacks (the audited interface returns labels only)."]
    labels = {"whitebox": "White-box evasion", "transfer": "Transfer from a substitute model",
              "blackbox": "Label-only attacks through the API", "detection": "Query-stream detection",
              "defenses": "Training-time defenses (adversarial training, ANT)"}
    for key, label in labels.items():
        if key in cfg and not (cfg.get(key) or {}).get("enabled", True):
            out.append(f"{label}: disabled in this campaign's configuration.")
    if cfg.get("transfer", {}).get("enabled", True) and not [r for r in res.get("transfer") or [] if not r.get("white_box")]:
        out.append("Transfer from a substitute model: needs two or more models.")
    wb = cfg.get("whitebox") or {}
    if (res.get("multilabel") or {}).get("clean"):
        out.append("Multi-label targets: attacks that change several findings at once, and one-finding attacks on "
                   "findings other than those listed in the per-finding table.")
    if wb.get("enabled", True) and wb.get("attacks") and (res.get("clean") or not res.get("multilabel")):
        out.append(f"White-box attacks other than {', '.join(a.upper() for a in wb['attacks'])}, budgets above "
                   f"{wb.get('eps', ['?'])[-1]} and norms other than {str(wb.get('norm', 'linf')).replace('linf', 'L∞')}.")
    bb = cfg.get("blackbox") or {}
    if bb.get("enabled", True) and res.get("blackbox"):
        out.append(f"Label-only attackers with more than {max(bb.get('budgets') or [0]):,} queries per image.")
        if any(r.get("defense") != "none" for r in res["blackbox"]) and \
                max(int(r.get("adaptive_k") or 1) for r in res["blackbox"]) == 1:
            out.append("An adaptive attacker (repeated queries, majority vote / EOT) against the noise defenses, and "
                       "white-box attacks through them: their results may overstate the protection.")
    return out


def _ci(point: Mapping[str, Any], metric: str) -> str:
    value, ci = point.get(metric), (point.get("ci") or {}).get(metric)
    if value is None:
        return "–"
    text = f"{value:.3f}" if metric == "auc" else pct(value)
    if ci and None not in ci:
        text += f" [{ci[0]:.3f}–{ci[1]:.3f}]" if metric == "auc" else f" [{pct(ci[0])}–{pct(ci[1])}]"
    return text


def _at_eps(recs: Sequence[Mapping[str, Any]], mode: str, finding: str) -> Mapping[str, Any] | None:
    """The white-box record of (finding, mode) at the largest eps ≤ 8/255 (else the smallest tested)."""
    mine = sorted((r for r in recs if r["finding"] == finding and r["mode"] == mode), key=lambda r: r["eps"])
    if not mine:
        return None
    return ([r for r in mine if r["eps"] <= 8 / 255 + 1e-9] or mine[:1])[-1]


def finding_rows(res: Mapping[str, Any]) -> list[list[Any]]:
    """One row per model and finding of a multi-label target: clean metrics at the card's threshold and
    what the one-finding attacks did (success = that finding flipped, all others unchanged)."""
    ml = res.get("multilabel") or {}
    rows = []
    for clean in ml.get("clean") or []:
        run = clean["run"]
        wb = [r for r in ml.get("whitebox") or [] if r["run"] == run]
        lo = [r for r in ml.get("label_only") or [] if r["run"] == run]
        for name, point in clean["findings"].items():
            cells = []
            for mode in ("hide", "add"):
                r = _at_eps(wb, mode, name)
                cells.append("–" if r is None else f"{pct(r['success_rate'])} at {_label(r['eps'])} (n={r['n']}; "
                                                   f"others kept {pct(r['others_unchanged_rate'])})")
            top = max((r for r in lo if r["finding"] == name), key=lambda r: r["budget"], default=None)
            label_only = "–" if top is None else f"{top['mode']} {pct(top['success_rate'])} at {top['budget']:,} queries (n={top['n']})"
            rows.append([run, name + (" (disease)" if name in (clean.get("disease") or []) else ""),
                         f"{point.get('threshold', 0.5):g}", _ci(point, "auc"), _ci(point, "sensitivity"),
                         _ci(point, "specificity"), *cells, label_only])
    return rows


FINDING_HEADERS = ["model", "finding", "threshold", "AUC [95% CI]", "sensitivity", "specificity",
                   "hide one (white-box)", "add one (white-box)", "label-only"]


def multilabel_section(res: dict[str, Any]) -> Section | None:
    """Per-finding details of multi-label targets: clean metrics, white-box and label-only records."""
    ml = res.get("multilabel") or {}
    if not ml.get("clean"):
        return None
    blocks: list[Any] = [
        Paragraph("Multi-label targets report one decision per finding (sigmoid ≥ the card's threshold). Clean "
                  "metrics per finding on the whole split with bootstrap 95% CIs; the attacks change one finding "
                  "and count as successful only when every other finding reads exactly as before."),
        Table(FINDING_HEADERS, finding_rows(res), "Per-finding results", wide=True)]
    for clean in ml["clean"]:
        macro = clean.get("macro") or {}
        blocks.append(Paragraph(f"{clean['run']}: {clean['n']:,} {clean.get('split', 'test')} images of "
                                f"{clean.get('dataset', '?')}; macro AUC {macro.get('auc', float('nan')):.3f}, exact "
                                f"match (every finding right) {pct(clean.get('exact_match'))}."))
    wb = [[r["run"], r["finding"], r["mode"], _label(r["eps"]), r["n"], pct(r["success_rate"]), pct(r["flip_rate"]),
           pct(r["others_unchanged_rate"]), pct(r.get("others_unchanged_given_flip"))] for r in ml.get("whitebox") or []]
    if wb:
        blocks.append(Table(["model", "finding", "mode", "ε (L∞)", "images", "success", "finding flipped",
                             "others unchanged", "others unchanged | flipped"], wb,
                            "White-box one-finding attack (PGD with a keep-the-others term)", wide=True))
    lo = [[r["run"], r["finding"], r["mode"], str(r["attack"]).upper(), f"{r['budget']:,}", r["n"], pct(r["success_rate"]),
           "–" if r.get("median_l2") is None else f"{r['median_l2']:.3g}", pct(r["others_unchanged_rate"])]
          for r in ml.get("label_only") or []]
    if lo:
        blocks.append(Table(["model", "finding", "mode", "attack", "queries", "images", "success", "median L2",
                             "others unchanged"], lo, "Label-only attack on one finding's decision", wide=True))
    return Section("Multi-label: results per finding", blocks, anchor="multilabel", new_page=True)


def summary_section(res: Mapping[str, Any], found: Sequence[Finding], names: Mapping[str, str]) -> Section:
    rating = overall(found)
    counts = {lvl: sum(f.severity == lvl for f in found) for lvl in reversed(LEVELS)}
    worst = _sorted(found)[0] if found else None
    head = (f"Overall rating: {WORD[rating]}. " + ", ".join(f"{c} {WORD[lvl].lower()}" for lvl, c in counts.items() if c)
            + f" across {len(found)} rated threats.")
    if worst is not None and worst.severity != "none":
        head += f" Worst: {THREATS.get(worst.threat, worst.threat)} on {worst.model}."
    rows = [[THREATS.get(f.threat, f.threat) + (f" — {f.defense}" if f.defense else ""), f.model, Badge(f.severity),
             f.evidence, _where(f)] for f in _sorted(found)]
    return Section("Executive summary", [
        Verdict(head, rating),
        Table(["threat", "model", "severity", "evidence", "details"], rows,
              "Threats ranked by severity (rules: docs/audit.md; PASS = tested, no weakness found)", wide=True),
        Paragraph("Severity levels are computed from the records by fixed rules, e.g. white-box evasion is HIGH when "
                  "the strongest attack flips at least half of the correctly classified diagnoses at a change of at "
                  "most 2/255 per pixel, and label-only attacks are HIGH when at least half are fooled within 1,000 "
                  "queries with an RMS change of at most 8/255 per pixel. Percentages in brackets are Wilson 95% "
                  "confidence intervals; n is the number of images each figure rests on."),
        *([Table(FINDING_HEADERS, finding_rows(res), "Multi-label targets: per finding (success = that finding "
                 "changed, every other finding unchanged)", wide=True)] if (res.get("multilabel") or {}).get("clean") else []),
        Paragraph("What this audit did not test:"),
        Bullets(not_tested(res)),
    ], anchor="summary")


def findings_sections(res: Mapping[str, Any], found: Sequence[Finding], figures: Mapping[str, Path]) -> list[Section]:
    out = [Section("Findings by model", [Paragraph("One entry per threat and model, worst first: the evidence "
                                                   "(with its sample size and 95% CI), the clinical direction of the "
                                                   "errors and the remedy this audit measured.")], anchor="findings",
                   new_page=True)]
    for run in dict.fromkeys(f.model for f in found):
        blocks: list[Any] = []
        for f in _sorted([f for f in found if f.model == run]):
            title = THREATS.get(f.threat, f.threat) + (f" — {f.defense}" if f.defense else "")
            blocks.append(Verdict(f"{title}: {f.evidence}.", f.severity))
            items = [f"Rule: {WORD[f.severity]} because {f.rule}."]
            if f.direction:
                items.append(f"Clinical direction: {f.direction}.")
            if f.remedy:
                items.append(f"Remedy: {f.remedy}")
            blocks.append(Bullets(items))
        grid = figures.get(f"grid|{run}")
        if grid is not None:
            blocks.append(Figure(grid, f"{run}: original | adversarial | amplified perturbation. Only images the model "
                                       f"classified correctly before the attack are shown."))
        out.append(Section(f"Model {run}", blocks, anchor=f"model-{run}", level=3))
    return out


# The frameworks' named threats and which of this audit's threats give evidence on them.
ANNEX: list[tuple[str, str, tuple[str, ...]]] = [
    ("FDA AI-enabled device guidance (cybersecurity, with the premarket cybersecurity guidance)", "Model evasion: "
     "input samples crafted to deceive the model", ("whitebox", "transfer", "label_only", "finding_whitebox", "finding_label_only")),
    ("FDA", "Data poisoning", ()),
    ("FDA", "Model inversion / stealing", ()),
    ("FDA", "Data leakage", ()),
    ("FDA", "Overfitting", ("clean",)),
    ("FDA", "Model bias", ()),
    ("FDA", "Performance drift", ()),
    ("EU AI Act Art. 15(5)", "Inputs designed to cause the model to make a mistake (adversarial examples or model "
     "evasion)", ("whitebox", "transfer", "label_only", "finding_whitebox", "finding_label_only")),
    ("EU AI Act Art. 15(5)", "Measures to prevent, detect, respond to and control such attacks", ("defense", "detection")),
    ("EU AI Act Art. 15(5)", "Data poisoning, model poisoning", ()),
    ("EU AI Act Art. 15(5)", "Confidentiality attacks", ()),
    ("EU AI Act Art. 15(5)", "Model flaws", ("clean",)),
]


def annex_section(res: Mapping[str, Any], found: Sequence[Finding], provenance: Mapping[str, Any] | None) -> Section:
    rows = []
    for framework, threat, tests in ANNEX:
        mine = [f for f in found if f.threat in tests]
        if mine:
            level = max(mine, key=lambda f: RANK[f.severity]).severity
            what = ", ".join(dict.fromkeys(THREATS[t] for t in tests if any(f.threat == t for f in mine)))
            result = f"{len(mine)} finding(s), worst {WORD[level]}"
            link: Any = Link("summary", "#summary")
        else:
            level, what, result, link = None, "not tested by this audit", "no evidence", "–"
        rows.append([framework, threat, what, Badge(level) if level else "–", result, link])
    prov = dict(provenance or {})
    versions = prov.get("versions") or {}
    blocks: list[Any] = [
        Paragraph("This annex maps the threats named by the FDA's guidance on AI-enabled device software functions "
                  "(its cybersecurity section lists data poisoning, model inversion/stealing, model evasion, data "
                  "leakage, overfitting, model bias and performance drift) and by Article 15(5) of the EU AI Act to "
                  "the tests of this audit. It is evidence for a technical file, not a compliance certificate: "
                  "whether a device meets either framework is decided by the manufacturer's risk management and the "
                  "regulator, on much more than this audit."),
        Table(["framework", "threat named", "test in this audit", "severity", "result", "where"], rows,
              "Regulatory evidence map", wide=True),
    ]
    repro = []
    if prov.get("command"):
        repro.append(f"Command: {prov['command']}")
    if versions:
        repro.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    repro.append(f"Seed {(res.get('config') or {}).get('seed', '?')}; audit.json schema version "
                 f"{res.get('schema_version', 'unversioned')}; every number in this report is computed from audit.json.")
    blocks += [Paragraph("To reproduce:"), Bullets(repro)]
    return Section("Regulatory evidence annex", blocks, anchor="annex", new_page=True)


def method_section(res: dict[str, Any]) -> Section:
    return Section("Method and reproducibility", [
        Paragraph("Attacks work in [0, 1] pixel space; white-box budgets are L∞ per pixel; black-box distances are L2 "
                  "over the whole image (the RMS change per pixel is L2 / √pixels). Flip rates count the images the "
                  "model classified correctly before the attack. The campaign configuration below and its seed "
                  "reproduce every number."),
        Table(["setting", "value"], list(config_rows(res.get("config") or {})), "Campaign configuration"),
    ], anchor="method")


def sections(res: dict[str, Any], figures: dict[str, Path], provenance: Mapping[str, Any] | None = None,
             found: Sequence[Finding] | None = None) -> list[Section]:
    names = defense_names(res)
    found = list(found) if found is not None else findings(res, names)
    details: list[Section | None] = [clean_section(res) if res.get("clean") else None, multilabel_section(res)]
    if res.get("whitebox"):
        details.append(whitebox_section(res, figures))
    details += [transfer_section(res, figures), blackbox_section(res, figures, names), calibration_section(res, figures),
                detection_section(res), defenses_section(res, figures, names)]
    return [summary_section(res, found, names), *findings_sections(res, found, figures),
            *[s for s in details if s is not None], annex_section(res, found, provenance), method_section(res)]


def write_report(res: dict[str, Any], out: Path, figures: dict[str, Path], title: str, meta: str = "",
                 provenance: Mapping[str, Any] | None = None, pdf: bool = True) -> dict[str, Any]:
    """``report.html``, ``report.md``, ``report.pdf`` and ``findings.json`` (the rated threats) in ``out``;
    returns their paths, the PDF engine and the overall rating."""
    found = findings(res, defense_names(res))
    secs = sections(res, figures, provenance, found)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rating = overall(found)
    (out / "findings.json").write_text(json.dumps({"overall": rating, "findings": [f.to_dict() for f in found]},
                                                  indent=2) + "\n")
    paths: dict[str, Any] = {"html": render_html(title, secs, out / "report.html", meta),
                             "markdown": render_markdown(title, secs, out / "report.md", meta),
                             "findings": out / "findings.json", "overall": rating}
    if pdf:
        paths["pdf_engine"] = write_pdf(paths["html"], out / "report.pdf", secs, title)
        paths["pdf"] = out / "report.pdf"
    return paths


def strip_summary(res: dict[str, Any], run: str) -> dict[str, Any] | None:
    """The inputs :func:`plot_strips` expects, for one model."""
    strips = {k.split("|", 1)[1]: v for k, v in res["strips"].items() if k.split("|")[0] == run}
    if not strips:
        return None
    first = next(iter(strips.values()))
    return {"image_shape": first["image_shape"], "first_image": first["original"],
            "strips": {k: v["adversarial"] for k, v in strips.items()},
            "records": [r for r in res["blackbox"] if r["run"] == run]}


def make_figures(res: dict[str, Any], out: Path, runs: Sequence[str],
                 examples: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """The report's PNGs, all from the records and the stored grid ``examples`` (per run; see
    :func:`medshield.evaluation.whitebox.grid_examples`): no model is loaded, no attack re-run."""
    figs: dict[str, Path] = {}
    wb = res["whitebox"]
    if wb:
        figs["robust_vs_eps"] = robust_vs_eps_panels(wb, out / "robust_vs_eps.png")
        for i, run in enumerate(runs):
            name = ref_name(run)
            if any(r["run"] == name for r in wb) and examples and examples.get(name):
                path = out / ("grid.png" if i == 0 else f"grid_{name}.png")
                figs[f"grid|{name}"] = draw_grid(examples[name], path, name)
        if f"grid|{ref_name(runs[0])}" in figs:
            figs["grid"] = figs[f"grid|{ref_name(runs[0])}"]
    if res["transfer"]:
        names, matrix = accuracy_matrix(res["transfer"])
        figs["transfer"] = heatmap(matrix, names, names, out / "transfer.png", xlabel="target", ylabel="source",
                                   title="Target accuracy on source's adversarials")
    if res["blackbox"]:
        figs["l2_vs_queries"] = l2_vs_queries_panels(res["blackbox"], out / "l2_vs_queries.png", defense_names(res))
        summary = strip_summary(res, ref_name(runs[0]))
        if summary:
            figs["strips"] = plot_strips(summary, out / "strips.png")
    if res.get("calibrations"):
        figs["calibration"] = plot_calibration(res["calibrations"], out / "calibration.png")
    if res["defenses"]:
        recs = [{**r, "label": f"{r['base_run']} {r['defense']}"} for r in res["defenses"]]
        figs["defense_bars"] = defense_bars(recs, out / "defense_bars.png")
    return figs


def versions() -> dict[str, str]:
    """medshield, torch and python versions (for the annex's reproduction line)."""
    import platform

    import torch

    import medshield

    return {"medshield": getattr(medshield, "__version__", "?"), "torch": torch.__version__,
            "python": platform.python_version()}
