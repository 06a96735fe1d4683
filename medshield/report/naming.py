"""Names and values as a person writes them: defenses (``rnd:nu=0.02`` -> "RND, input noise σ = 0.02"),
budgets (``0.00784`` -> "2/255") and campaign settings (lists, nulls, booleans)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

DEFENSES = {
    "none": "no defense",
    "rnd": "RND (random noise on each query)",
    "dnd": "DND (noise on each query and on the output scores)",
    "at": "adversarial training (AT)",
    "ant": "adversarial and noise training (ANT)",
    "noise": "Gaussian-noise training",
}
SHORT = {"rnd": "RND", "dnd": "DND", "at": "AT", "ant": "ANT", "noise": "noise training"}
PARAMS = {("rnd", "nu"): "input noise σ", ("dnd", "m"): "input noise σ", ("dnd", "n"): "output noise σ"}


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"dnd:m=0.01:n=0.5"`` -> ``("dnd", {"m": "0.01", "n": "0.5"})`` (no validation: any record's spec)."""
    name, *items = [p.strip() for p in str(spec).split(":")]
    params = {}
    for item in items:
        key, _, value = item.partition("=")
        params[key.strip()] = value.strip()
    return name.lower(), params


def number(value: Any) -> str:
    """A number as written by hand: 0.02, 1,000, 2/255-style budgets left to the caller."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v.is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:g}"


def defense_name(spec: str | None, params: Mapping[str, Any] | None = None) -> str:
    """A readable name for a defense spec or training-defense name."""
    if not spec:
        return "no defense"
    name, parsed = split_spec(spec)
    values = {**parsed, **{k: str(v) for k, v in (params or {}).items()}}
    if name == "none":
        return "no defense"
    short = SHORT.get(name, name.upper())
    if not values:
        return DEFENSES.get(name, short)
    parts = [f"{PARAMS.get((name, k), k)} = {number(v)}" for k, v in values.items()]
    return f"{short} ({', '.join(parts)})"


def defense_names(res: Mapping[str, Any]) -> dict[str, str]:
    """Readable names for every defense spec and training defense in an audit's records."""
    out: dict[str, str] = {}
    for r in res.get("blackbox") or []:
        spec = r.get("defense_spec") or r.get("defense")
        if spec:
            out[spec] = defense_name(spec, r.get("defense_params"))
    for r in res.get("defended_clean") or []:
        if r.get("defense"):
            out.setdefault(r["defense"], defense_name(r["defense"]))
    for r in res.get("defenses") or []:
        if r.get("defense"):
            out.setdefault(r["defense"], DEFENSES.get(r["defense"], defense_name(r["defense"])))
    return out


def eps_value(value: Any) -> str:
    """A budget as 2/255 where it sits on the /255 grid (strings such as "2/255" pass through)."""
    if isinstance(value, str):
        return value
    x = float(value) * 255
    return f"{x:g}/255" if abs(x * 2 - round(x * 2)) < 1e-6 else f"{float(value):g}"


def value_text(value: Any) -> str:
    """A configuration value as a person writes it: lists comma-separated, null as 'all' or '–'."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {value_text(v)}" for k, v in value.items())
    return str(value)


NULL_MEANS = {"n_images": "all", "runs": "every model", "eval_n": "all", "defended_attacks": "all listed attacks",
              "address": "–"}


def config_rows(config: Mapping[str, Any], prefix: str = "") -> Iterator[list[str]]:
    """``[setting, value]`` rows, nested sections flattened (``whitebox.attacks``)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from config_rows(value, f"{name}.")
        elif value is None:
            yield [name, NULL_MEANS.get(key, "–")]
        elif key == "defenses" and isinstance(value, list):
            yield [name, ", ".join(defense_name(v) for v in value) or "none"]
        else:
            yield [name, value_text(value)]
