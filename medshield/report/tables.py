"""Generic Markdown tables from lists of records (dicts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Column = str | tuple[str, str]
Formatter = str | Callable[[Any], str]


def _get(record: Mapping[str, Any], key: str) -> Any:
    """``a.b.c`` looks into nested dicts."""
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def format_value(value: Any, fmt: Formatter | None = None) -> str:
    if value is None:
        return "–"
    if callable(fmt):
        return fmt(value)
    if fmt is not None:
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value: float) -> str:
    """``0.9375`` -> ``93.75%``."""
    return f"{100 * value:.2f}%"


def markdown_table(records: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                   formats: Mapping[str, Formatter] | None = None) -> str:
    """A Markdown table with one row per record; a column is a key (dots reach into nested dicts) or a
    ``(key, header)`` pair; ``formats`` maps keys to a format spec (``".3f"``) or a function."""
    formats = formats or {}
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for rec in records:
        lines.append("| " + " | ".join(format_value(_get(rec, k), formats.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def pivot_table(records: Sequence[Mapping[str, Any]], rows: Sequence[str], column: str, value: str,
                fmt: Formatter | None = None, row_headers: Sequence[str] | None = None) -> str:
    """Pivot: one row per distinct ``rows`` tuple, one column per distinct ``column`` value, cells ``value``
    (e.g. attack x eps rows, one column per model; or a source x target matrix)."""
    row_keys: list[tuple] = []
    col_keys: list[Any] = []
    cells: dict[tuple, Any] = {}
    for rec in records:
        rk, ck = tuple(_get(rec, r) for r in rows), _get(rec, column)
        if rk not in row_keys:
            row_keys.append(rk)
        if ck not in col_keys:
            col_keys.append(ck)
        cells[(rk, ck)] = _get(rec, value)
    headers = list(row_headers or rows) + [str(c) for c in col_keys]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for rk in row_keys:
        vals = [format_value(v) for v in rk] + [format_value(cells.get((rk, ck)), fmt) for ck in col_keys]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
