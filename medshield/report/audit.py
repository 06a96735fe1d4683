"""The audit report: plain-language verdicts per threat, tables and figures, rendered from
``audit.json`` into ``report.html`` (self-contained) and ``report.md``.

Verdict severity: *high* when a realistic attacker succeeds on most images (white-box: >= 50% of
correctly classified images flipped at <= 2/255 per pixel; black-box: >= 90% success with an RMS
change per pixel <= 8/255 at the largest budget), *medium* when it takes larger changes, *low* otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medshield.report.document import Figure, Paragraph, Section, Table, Verdict, render_html, render_markdown


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _label(eps: float) -> str:
    from medshield.evaluation.whitebox import eps_label

    return eps_label(eps)


def clean_section(res: dict[str, Any]) -> Section:
    rows = [[r["run"], r["model"], r["dataset"], r["n"], pct(r["accuracy"]), pct(r.get("sensitivity")),
             pct(r.get("specificity")), r.get("auc"),
             "–" if "ci" not in r else f"{pct(r['ci']['accuracy'][0])}–{pct(r['ci']['accuracy'][1])}"]
            for r in res["clean"]]
    blocks: list[Any] = [Table(["run", "model", "dataset", "test images", "accuracy", "sensitivity", "specificity",
                                "AUC", "accuracy 95% CI"], rows, "Clean performance (bootstrap 95% CI)")]
    for r in res["clean"]:
        blocks.append(Verdict(f"{r['run']} diagnoses {pct(r['accuracy'])} of {r['n']} test images correctly "
                              f"(sensitivity {pct(r.get('sensitivity'))}, specificity {pct(r.get('specificity'))}).", "low"))
    return Section("System under test", blocks)


def _classes(res: dict[str, Any], run: str) -> tuple[list[str], int | None]:
    rec = next((r for r in res["clean"] if r["run"] == run), None)
    return (rec["classes"], rec["positive_class"]) if rec else (["class 0", "class 1"], None)


def whitebox_verdict(recs: list[dict[str, Any]], classes: list[str], positive: int | None) -> Verdict:
    """The smallest eps at which the strongest attack flips most images, in clinical words."""
    by_eps: dict[float, dict[str, Any]] = {}
    for r in recs:
        best = by_eps.get(r["eps"])
        if best is None or r["success_rate"] > best["success_rate"]:
            by_eps[r["eps"]] = r
    eps_sorted = sorted(by_eps)
    pick = next((by_eps[e] for e in eps_sorted if by_eps[e]["success_rate"] >= 0.5), by_eps[eps_sorted[-1]])
    eps, run = pick["eps"], pick["run"]
    sev = "high" if pick["success_rate"] >= 0.5 and eps <= 2 / 255 + 1e-9 else \
        "medium" if pick["success_rate"] >= 0.5 or pick["success_rate"] >= 0.1 else "low"
    d = pick.get("directions") or {}
    if positive is not None and d:
        dis, nor = classes[positive], classes[1 - positive]
        parts = []
        for key, src, dst in (("disease_to_normal", dis, nor), ("normal_to_disease", nor, dis)):
            fr = d.get(key, {}).get("flip_rate")
            if fr is not None:
                parts.append(f"{pct(fr)} of '{src}' images into '{dst}'")
        what = " and ".join(parts)
    else:
        what = f"{pct(pick['success_rate'])} of correctly classified images into a wrong class"
    return Verdict(f"{run}: a change of at most {_label(eps)} per pixel ({pick['attack'].upper()}, white-box) turns "
                   f"{what}; robust accuracy {pct(pick['robust_accuracy'])} vs {pct(pick['clean_accuracy'])} clean.", sev)


def whitebox_section(res: dict[str, Any], figures: dict[str, Path]) -> Section:
    recs = res["whitebox"]
    blocks: list[Any] = []
    for run in dict.fromkeys(r["run"] for r in recs):
        classes, positive = _classes(res, run)
        blocks.append(whitebox_verdict([r for r in recs if r["run"] == run], classes, positive))
    eps_list = sorted({r["eps"] for r in recs})
    rows = {}
    for r in recs:
        rows.setdefault((r["run"], r["attack"]), {})[r["eps"]] = r["robust_accuracy"]
    blocks.append(Table(["run", "attack", *[_label(e) for e in eps_list]],
                        [[run, atk.upper(), *[pct(v.get(e)) for e in eps_list]] for (run, atk), v in rows.items()],
                        "Robust accuracy under white-box attack (L∞ budget per pixel)"))
    dir_rows = [[r["run"], r["attack"].upper(), _label(r["eps"]),
                 pct(r["directions"].get("disease_to_normal", {}).get("flip_rate")),
                 pct(r["directions"].get("normal_to_disease", {}).get("flip_rate"))]
                for r in recs if r.get("directions") and abs(r["eps"] - 2 / 255) < 1e-9]
    if dir_rows:
        blocks.append(Table(["run", "attack", "eps", "disease→normal (missed diagnosis)", "normal→disease (false alarm)"],
                            dir_rows, "Clinical direction at 2/255: flip rate among correctly classified images"))
    for key, cap in (("robust_vs_eps", "Robust accuracy vs perturbation budget (dashed: clean accuracy)"),
                     ("grid", "Original, adversarial and amplified perturbation, with predicted labels and confidences")):
        if key in figures:
            blocks.append(Figure(figures[key], cap))
    return Section("White-box attacks (the attacker knows the model)", blocks)


def transfer_section(res: dict[str, Any], figures: dict[str, Path]) -> Section | None:
    recs = [r for r in res["transfer"] if not r["white_box"]]
    if not recs:
        return None
    worst = max(recs, key=lambda r: r["success_rate"])
    sev = "high" if worst["success_rate"] >= 0.5 else "medium" if worst["success_rate"] >= 0.1 else "low"
    blocks: list[Any] = [Verdict(
        f"Adversarial images made on {worst['source']} ({worst['attack'].upper()}, {worst['eps_label']}) also fool "
        f"{worst['target']} on {pct(worst['success_rate'])} of the images it classified correctly: an attacker "
        f"without access to {worst['target']} can use a substitute model.", sev)]
    blocks.append(Table(["source", "target", "target clean acc", "target acc on source's adversarials", "flipped"],
                        [[r["source"], r["target"], pct(r["clean_accuracy"]), pct(r["robust_accuracy"]),
                          pct(r["success_rate"])] for r in res["transfer"]], "Transferability"))
    if "transfer" in figures:
        blocks.append(Figure(figures["transfer"], "Target accuracy on each source's adversarial images"))
    return Section("Transfer attacks (the attacker uses a substitute model)", blocks)


def _rms255(l2: float | None, dim: int) -> float | None:
    return None if l2 is None else 255 * l2 / math.sqrt(dim)


def blackbox_section(res: dict[str, Any], figures: dict[str, Path]) -> Section | None:
    recs = res["blackbox"]
    if not recs:
        return None
    dim = int(math.prod(next(iter(res["strips"].values()))["image_shape"])) if res["strips"] else 1
    top = max(r["budget"] for r in recs)
    blocks: list[Any] = []
    final = [r for r in recs if r["budget"] == top]
    undefended = [r for r in final if r["defense"] == "none"]
    if undefended:
        best = min(undefended, key=lambda r: (-r["success_rate"], r["median_l2"] or math.inf))
        rms = _rms255(best["median_l2"], dim)
        sev = "high" if best["success_rate"] >= 0.9 and rms is not None and rms <= 8 else "medium"
        if rms is None:  # no image's attack succeeded within the budget
            blocks.append(Verdict(f"{best['run']}: no label-only attack found a misdiagnosis within {top:,} queries.", "low"))
        else:
            blocks.append(Verdict(
                f"{best['run']}: seeing only the predicted label, {best['attack'].upper()} finds a misdiagnosis for "
                f"{pct(best['success_rate'])} of images within {top:,} queries each, with median L2 "
                f"{best['median_l2']:.3g} (RMS change {rms:.2g}/255 per pixel).", sev))
    for r in final:
        if r["defense"] == "none":
            continue
        base = next((u for u in undefended if u["run"] == r["run"] and u["attack"] == r["attack"]), None)
        if base and base["median_l2"] and r["median_l2"]:
            ratio = r["median_l2"] / base["median_l2"]
            drop = None
            if r.get("defended_clean_accuracy") is not None:
                clean = next((c["accuracy"] for c in res["defended_clean"] if c["run"] == r["run"] and c["defense"] == "none"), None)
                drop = None if clean is None else clean - r["defended_clean_accuracy"]
            cost = "" if drop is None else f" at a cost of {100 * drop:.1f} points of clean accuracy ({pct(r.get('flip_rate'))} of clean diagnoses flip)"
            real = "" if r.get("defended_success_rate") is None else \
                f" Of the adversarials the attacker ends with, {pct(r['success_rate'])} fool the classifier itself and a " \
                f"single query to the defended model is fooled {pct(r['defended_success_rate'])} of the time."
            blocks.append(Verdict(
                f"{r['run']}: {r.get('defense_spec', r['defense']).upper()} multiplies {r['attack'].upper()}'s median L2 at {top:,} queries by {ratio:.1f} "
                f"({base['median_l2']:.3g} → {r['median_l2']:.3g}){cost}.{real}", "low" if ratio >= 3 else "medium"))
    budgets = sorted({r["budget"] for r in recs})
    by = {(r["run"], r["attack"], r["defense_spec"], r["budget"]): r for r in recs}
    rows = []
    for run, attack, spec in dict.fromkeys((r["run"], r["attack"], r["defense_spec"]) for r in recs):
        cells = [by[(run, attack, spec, b)] for b in budgets]
        rows.append([run, attack.upper(), spec, pct(cells[-1].get("defended_clean_accuracy")),
                     *[f"{c['mean_l2']:.3g} / {c['median_l2']:.3g}" if c["median_l2"] is not None else "–" for c in cells],
                     pct(cells[-1]["success_rate"]), pct(cells[-1].get("defended_success_rate", cells[-1]["success_rate"]))])
    blocks.append(Table(["run", "attack", "defense", "defended clean acc", *[f"{b:,} q mean / median L2" for b in budgets],
                         "fools the model", "fools the defended model (one query)"], rows,
                        "Label-only attacks: L2 distance of the adversarial the attacker ends with at each query budget"))
    for key, cap in (("l2_vs_queries", "L2 vs queries (solid mean, dashed median)"),
                     ("strips", "One image's adversarial at each budget")):
        if key in figures:
            blocks.append(Figure(figures[key], cap))
    return Section("Black-box attacks (the attacker sees only the label)", blocks)


def detection_section(res: dict[str, Any]) -> Section | None:
    if not res["detection"]:
        return None
    blocks: list[Any] = []
    for rec in res["detection"]:
        within = rec["config"]["within"]
        attacks = [r for r in rec["records"] if r["kind"].startswith("attack:")]
        benign = [r for r in rec["records"] if r["kind"].startswith("benign:")]
        for a in attacks:
            share = a[f"flagged_within_{within}"]
            blocks.append(Verdict(f"{rec['run']}: the stateful detector flags {pct(share)} of {a['stream'].upper()} "
                                  f"query streams within {within:,} queries (median: after {a['flagged_at_median']} "
                                  f"queries).", "low" if share >= 0.99 else "medium"))
        fp = max((b["flagged_fraction"] for b in benign), default=0.0)
        blocks.append(Verdict(f"{rec['run']}: {pct(fp)} of benign client streams (test images, plain, noisy and "
                              f"shifted) are falsely flagged.", "low" if fp <= 0.01 else "medium"))
        blocks.append(Table(["stream", "streams", "flagged", f"within {within:,}", "median flagged at"],
                            [[r["kind"], r["n_streams"], pct(r["flagged_fraction"]), pct(r[f"flagged_within_{within}"]),
                              r["flagged_at_median"]] for r in rec["records"]], f"{rec['run']}: stream detection"))
    return Section("Detection of attack query streams", blocks)


def defenses_section(res: dict[str, Any], figures: dict[str, Path]) -> Section | None:
    recs = res["defenses"]
    if not recs:
        return None
    rows = [[r["base_run"], r["defense"], r.get("train_attack") or "–", r["eval_attack"], pct(r["clean_accuracy"]),
             pct(r["robust_accuracy"])] for r in recs]
    blocks: list[Any] = [Table(["model", "defense", "trained on", "evaluated with", "clean acc", "robust acc"], rows,
                               "Training-time defenses")]
    for d in dict.fromkeys(r["defense"] for r in recs):
        sub = [r for r in recs if r["defense"] == d]
        worst = min(sub, key=lambda r: r["robust_accuracy"])
        blocks.append(Verdict(f"{d.upper()}: clean accuracy {pct(worst['clean_accuracy'])}; its weakest point is "
                              f"{worst['eval_attack'].upper()} at {pct(worst['robust_accuracy'])} robust accuracy.",
                              "low" if worst["robust_accuracy"] >= 0.6 else "medium"))
    if "defense_bars" in figures:
        blocks.append(Figure(figures["defense_bars"], "Accuracy per defense and attack"))
    return Section("Hardening: training-time defenses", blocks)


def method_section(res: dict[str, Any]) -> Section:
    return Section("Method and reproducibility", [
        Paragraph("Every number above is computed from audit.json (written next to this report); the campaign "
                  "configuration below and its seed reproduce it exactly. Attacks work in [0, 1] pixel space; "
                  "white-box budgets are L∞ per pixel; black-box distances are L2 over the whole image."),
        Table(["setting", "value"], [[k, yaml.safe_dump(v, default_flow_style=True).strip()]
                                     for k, v in res["config"].items()], "Campaign configuration"),
    ])


def sections(res: dict[str, Any], figures: dict[str, Path]) -> list[Section]:
    out: list[Section | None] = [clean_section(res)]
    if res["whitebox"]:
        out.append(whitebox_section(res, figures))
    out += [transfer_section(res, figures), blackbox_section(res, figures), detection_section(res),
            defenses_section(res, figures), method_section(res)]
    found = [s for s in out if s is not None]
    summary = Section("Verdicts", [b for s in found for b in s.blocks if isinstance(b, Verdict)])
    return [summary, *found]


def write_report(res: dict[str, Any], out: Path, figures: dict[str, Path], title: str, meta: str = "") -> tuple[Path, Path]:
    secs = sections(res, figures)
    return (render_html(title, secs, out / "report.html", meta), render_markdown(title, secs, out / "report.md", meta))


def strip_summary(res: dict[str, Any], run: str) -> dict[str, Any] | None:
    """The inputs :func:`plot_strips` expects, for one model."""
    strips = {k.split("|", 1)[1]: v for k, v in res["strips"].items() if k.split("|")[0] == run}
    if not strips:
        return None
    first = next(iter(strips.values()))
    return {"image_shape": first["image_shape"], "first_image": first["original"],
            "strips": {k: v["adversarial"] for k, v in strips.items()},
            "records": [r for r in res["blackbox"] if r["run"] == run]}


def make_figures(res: dict[str, Any], out: Path, runs: Sequence[str], dataset: str | None, data_dir: str | None,
                 seed: int) -> dict[str, Path]:
    """The report's PNGs from the records (and, for the image grid, the first model)."""
    from medshield.evaluation.transfer import accuracy_matrix
    from medshield.report.blackbox_plots import plot_l2_vs_queries, plot_strips
    from medshield.report.plots import heatmap, line_plot

    figs: dict[str, Path] = {}
    wb = res["whitebox"]
    if wb:
        multi = len({r["run"] for r in wb}) > 1
        figs["robust_vs_eps"] = line_plot(wb, "eps", "robust_accuracy", ["run", "attack"] if multi else "attack",
                                          out / "robust_vs_eps.png", xlabel="eps (x/255)", ylabel="robust accuracy",
                                          x_scale=255, baseline="clean_accuracy",
                                          title="Robust accuracy vs perturbation budget")
        figs["grid"] = _grid(res, out, runs[0], dataset, data_dir, seed)
    if res["transfer"]:
        names, matrix = accuracy_matrix(res["transfer"])
        figs["transfer"] = heatmap(matrix, names, names, out / "transfer.png", xlabel="target", ylabel="source",
                                   title="Target accuracy on source's adversarials")
    if res["blackbox"]:
        figs["l2_vs_queries"] = plot_l2_vs_queries({"records": [{**r, "defense": r["defense_spec"] if len(runs) == 1 else
                                                                 f"{r['defense_spec']}, {r['run']}"} for r in res["blackbox"]]},
                                                   out / "l2_vs_queries.png")
        summary = strip_summary(res, Path(runs[0]).name)
        if summary:
            figs["strips"] = plot_strips(summary, out / "strips.png")
    if res["defenses"]:
        from medshield.report.defense import defense_bars

        recs = [{**r, "label": f"{r['base_run']} {r['defense']}"} for r in res["defenses"]]
        figs["defense_bars"] = defense_bars(recs, out / "defense_bars.png")
    return figs


def _grid(res: dict[str, Any], out: Path, run: str, dataset: str | None, data_dir: str | None, seed: int) -> Path:
    from medshield.campaign.jobs import _load, eval_images
    from medshield.evaluation.whitebox import WhiteboxJob, parse_eps
    from medshield.report.whitebox import write_grid
    from medshield.types import Norm

    cfg = res["config"]["whitebox"]
    model, ds = _load(run, dataset, data_dir)
    x, y = eval_images(ds, res["config"]["split"], cfg["n_images"], seed)
    job = WhiteboxJob(attacks=cfg["attacks"], eps=parse_eps(cfg["eps"]), norm=Norm.parse(cfg["norm"]), seed=seed)
    return write_grid(model, ds, x, y, job, out / "grid.png", Path(run).name, per_class=cfg["grid_images"])
