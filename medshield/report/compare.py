"""``medshield compare OLD NEW``: what got better or worse between two audits (e.g. model v1 vs v2).

Both audits are re-rated with the current severity rules (:mod:`medshield.report.severity`), so the
comparison never mixes two versions of the rules. Models are matched by run name; models left over
on both sides are paired in their order (so one model vs its hardened copy pairs up by itself).
A threat got *worse* when its severity rose, or stayed at its level while its measure (e.g. the
flip fraction) rose by at least 5 points; *better* the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medshield.errors import MedShieldError
from medshield.report.naming import defense_names
from medshield.report.schema import SCHEMA_VERSION
from medshield.report.severity import RANK, THREATS, WORD, Finding, findings, overall

SCORE_TOLERANCE = 0.05


def load_audit(path: str | Path) -> dict[str, Any]:
    """An ``audit.json`` file, or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "audit.json"
    if not p.is_file():
        raise MedShieldError(f"{path}: no audit.json there (give an audit.json or the folder medshield audit wrote)")
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise MedShieldError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(res, dict) or "config" not in res:
        raise MedShieldError(f"{p} is not an audit.json written by medshield audit")
    return res


def _models(res: Mapping[str, Any]) -> list[str]:
    keys = ("clean", "whitebox", "blackbox", "detection")
    return list(dict.fromkeys(r["run"] for k in keys for r in res.get(k) or [] if "run" in r))


def pair_models(old: Mapping[str, Any], new: Mapping[str, Any], pairs: Mapping[str, str] | None = None) -> dict[str, str]:
    """old run name -> new run name: explicit ``pairs``, then equal names, then the rest in order."""
    a, b = _models(old), _models(new)
    out = {k: v for k, v in (pairs or {}).items() if k in a and v in b}
    for name in a:
        if name not in out and name in b and name not in out.values():
            out[name] = name
    rest_a = [m for m in a if m not in out]
    rest_b = [m for m in b if m not in out.values()]
    out.update(zip(rest_a, rest_b))
    return out


def _key(f: Finding, model: str) -> str:
    return "|".join(p for p in (f.threat, model, f.defense) if p)


def _side(f: Finding | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"model": f.model, "severity": f.severity, "score": f.score, "evidence": f.evidence}


def _change(old: Finding | None, new: Finding | None) -> str:
    if old is None:
        return "new"
    if new is None:
        return "gone"
    if RANK[new.severity] != RANK[old.severity]:
        return "worse" if RANK[new.severity] > RANK[old.severity] else "better"
    if old.score is not None and new.score is not None and abs(new.score - old.score) >= SCORE_TOLERANCE:
        return "worse" if new.score > old.score else "better"
    return "same"


def compare(old: Mapping[str, Any], new: Mapping[str, Any], pairs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The comparison record (what ``compare.json`` holds)."""
    mapping = pair_models(old, new, pairs)
    f_old, f_new = findings(old, defense_names(old)), findings(new, defense_names(new))
    olds = {_key(f, mapping.get(f.model, f.model)): f for f in f_old}
    news = {_key(f, f.model): f for f in f_new}
    changes = []
    for key in dict.fromkeys([*news, *olds]):
        o, n = olds.get(key), news.get(key)
        ref = n or o
        assert ref is not None
        delta = None if o is None or n is None or o.score is None or n.score is None else n.score - o.score
        changes.append({"key": key, "threat": ref.threat, "title": THREATS.get(ref.threat, ref.threat),
                        "defense": ref.defense, "change": _change(o, n), "old": _side(o), "new": _side(n),
                        "score_change": delta})
    order = {"worse": 0, "new": 1, "better": 2, "gone": 3, "same": 4}
    changes.sort(key=lambda c: order[c["change"]])
    counts = {k: sum(c["change"] == k for c in changes) for k in order}
    return {"schema_version": SCHEMA_VERSION, "models": mapping,
            "overall": {"old": overall(f_old), "new": overall(f_new)}, "counts": counts, "changes": changes}


def regressions(cmp: Mapping[str, Any], level: str) -> list[dict[str, Any]]:
    """Threats whose severity rose to ``level`` or above (or that are new at ``level`` or above):
    what ``--fail-on LEVEL`` stops a release for."""
    if level not in RANK or level == "none":
        raise MedShieldError(f"unknown severity {level!r}: use high, medium or low")
    out = []
    for c in cmp["changes"]:
        new = c.get("new")
        if not new or RANK[new["severity"]] < RANK[level]:
            continue
        old = c.get("old")
        if old is None or RANK[new["severity"]] > RANK[old["severity"]]:
            out.append(c)
    return out


def _sev(side: Mapping[str, Any] | None) -> str:
    return "–" if side is None else WORD[side["severity"]]


def _score(side: Mapping[str, Any] | None) -> str:
    return "–" if side is None or side.get("score") is None else f"{100 * side['score']:.1f}%"


def compare_markdown(cmp: Mapping[str, Any], old_name: str, new_name: str) -> str:
    o, n = cmp["overall"]["old"], cmp["overall"]["new"]
    pairs = ", ".join(f"{a} → {b}" for a, b in cmp["models"].items()) or "none"
    c = cmp["counts"]
    lines = [f"# Audit comparison: {old_name} → {new_name}", "",
             f"Overall rating: **{WORD[o]} → {WORD[n]}**. Models compared: {pairs}.", "",
             f"{c['worse']} worse, {c['better']} better, {c['same']} unchanged, {c['new']} new, {c['gone']} no longer "
             f"tested. The measure is each rule's number (e.g. the share of correct diagnoses that flip), higher = "
             f"worse; a change of {100 * SCORE_TOLERANCE:.0f} points or more, or a new severity, counts.", "",
             "| change | threat | model | severity before | severity after | measure before | measure after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for ch in cmp["changes"]:
        title = ch["title"] + (f" — {ch['defense']}" if ch.get("defense") else "")
        model = (ch["new"] or ch["old"])["model"]
        if ch["old"] and ch["new"] and ch["old"]["model"] != ch["new"]["model"]:
            model = f"{ch['old']['model']} → {ch['new']['model']}"
        lines.append(f"| {ch['change']} | {title} | {model} | {_sev(ch['old'])} | {_sev(ch['new'])} | "
                     f"{_score(ch['old'])} | {_score(ch['new'])} |")
    lines += ["", "## Evidence", ""]
    for ch in cmp["changes"]:
        if ch["change"] == "same":
            continue
        lines.append(f"- **{ch['change']}** — {ch['title']}{' — ' + ch['defense'] if ch.get('defense') else ''}: "
                     f"before: {ch['old']['evidence'] if ch['old'] else 'not tested'}; "
                     f"after: {ch['new']['evidence'] if ch['new'] else 'not tested'}.")
    return "\n".join(lines) + "\n"


def write_compare(old: str | Path, new: str | Path, out: str | Path,
                  pairs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Compare two audits; writes ``OUT/compare.json`` and ``OUT/compare.md``; returns the record."""
    cmp = compare(load_audit(old), load_audit(new), pairs)
    cmp = {"old": str(old), "new": str(new), **cmp}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(cmp, indent=2) + "\n")
    (out / "compare.md").write_text(compare_markdown(cmp, str(old), str(new)))
    return cmp
