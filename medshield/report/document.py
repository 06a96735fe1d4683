"""A small report document model rendered to self-contained HTML (images inline) and Markdown.

Reports are functions of JSON records: build :class:`Section` objects from records, then call
:func:`render_html` / :func:`render_markdown`.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #0b5394;padding-bottom:.3em}h2{color:#0b5394;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #c9d1d9;padding:.35em .6em;text-align:right}
th{background:#eef3f8}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
.verdict{padding:.6em 1em;border-left:5px solid #999;background:#f6f8fa;margin:.6em 0}
.verdict.high{border-color:#c62828;background:#fdecea}.verdict.medium{border-color:#ef6c00;background:#fff4e5}
.verdict.low{border-color:#2e7d32;background:#edf7ed}.meta{color:#555;font-size:.9em}
"""


@dataclass
class Paragraph:
    text: str


@dataclass
class Verdict:
    text: str
    severity: str = "medium"  # high | medium | low


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Paragraph | Verdict | Table | Figure] = field(default_factory=list)


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _img_data(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"data:image/png;base64,{data}"


def _html_block(block: Any) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Verdict):
        return f'<div class="verdict {html.escape(block.severity)}">{html.escape(block.text)}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in block.rows)
        cap = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        alt = html.escape(block.caption or Path(block.path).stem)
        return (f'<figure><img src="{_img_data(block.path)}" alt="{alt}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(title: str, sections: Sequence[Section], out: Path, meta: str = "") -> Path:
    """A single self-contained HTML file (CSS and PNGs inline, no external requests)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(f'<p class="meta">{html.escape(meta)}</p>')
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(_html_block(b) for b in section.blocks)
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out


def _md_block(block: Any, base: Path) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Verdict):
        return f"> **{block.severity.upper()}** — {block.text}"
    if isinstance(block, Table):
        head = "| " + " | ".join(str(c) for c in block.columns) + " |"
        sep = "| " + " | ".join("---" for _ in block.columns) + " |"
        rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in block.rows]
        cap = [f"*{block.caption}*", ""] if block.caption else []
        return "\n".join([*cap, head, sep, *rows])
    if isinstance(block, Figure):
        rel = os.path.relpath(Path(block.path).resolve(), base.resolve())
        return f"![{block.caption}]({rel})"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(title: str, sections: Sequence[Section], out: Path, meta: str = "") -> Path:
    """Markdown with images linked relative to the report's folder."""
    out = Path(out)
    lines = [f"# {title}", ""]
    if meta:
        lines += [f"_{meta}_", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [_md_block(block, out.parent), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
