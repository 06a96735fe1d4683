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
figure{margin:1em 0}.cap{color:#333;font-size:.9em;margin:1em 0 .2em 0;break-after:avoid;page-break-after:avoid}.tbl table{margin-top:.2em}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
.verdict{padding:.6em 1em;border-left:5px solid #999;background:#f6f8fa;margin:.6em 0}
.verdict.high{border-color:#c62828;background:#fdecea}.verdict.medium{border-color:#ef6c00;background:#fff4e5}
.verdict.low{border-color:#8d6e00;background:#fbf6e3}.verdict.none{border-color:#2e7d32;background:#edf7ed}
.meta{color:#555;font-size:.9em}
.sev{display:inline-block;min-width:4.6em;text-align:center;font-weight:700;font-size:.85em;padding:.1em .4em;border-radius:3px;
border:1px solid #555;color:#fff}.sev.high{background:#b71c1c}.sev.medium{background:#e65100}.sev.low{background:#8d6e00}
.sev.none{background:#2e7d32}
table.wide td,table.wide th{text-align:left;vertical-align:top}h3{margin-top:1.4em;color:#1b3a5c}ul{margin:.4em 0}
.overall{font-size:1.15em;margin:.8em 0}
@page{size:A4;margin:14mm 12mm 16mm 12mm}
@media print{body{max-width:none;margin:0;padding:0;font-size:10pt}table{font-size:8.5pt}h2{break-after:avoid;page-break-after:avoid}
h3{break-after:avoid}figure,tr,.verdict{break-inside:avoid;page-break-inside:avoid}
figure img{max-height:235mm;width:auto;max-width:100%}a{color:inherit}
section.major{break-before:page;page-break-before:always}}
"""


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: Sequence[str]


@dataclass
class Link:
    """A table cell or line that links to an anchor (``#whitebox``) in the same report."""

    text: str
    href: str


@dataclass
class Badge:
    """A severity written as a word on its colour (``high``, ``medium``, ``low``, ``none`` = PASS)."""

    severity: str

    @property
    def word(self) -> str:
        return {"none": "PASS"}.get(self.severity, self.severity.upper())


@dataclass
class Verdict:
    text: str
    severity: str = "medium"  # high | medium | low | none


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    wide: bool = False  # left-aligned text columns (e.g. the threat table)


@dataclass
class Figure:
    path: Path
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)
    anchor: str | None = None  # the HTML id, so other parts of the report can link here
    level: int = 2  # 2 = a section, 3 = a subsection
    new_page: bool = False  # start a new page when printed


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


def _html_cell(value: Any) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.href)}">{html.escape(value.text)}</a>'
    if isinstance(value, Badge):
        return f'<span class="sev {html.escape(value.severity)}">{html.escape(value.word)}</span>'
    return html.escape(fmt(value))


def _html_block(block: Any) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in block.items) + "</ul>"
    if isinstance(block, Verdict):
        badge = _html_cell(Badge(block.severity))
        return f'<div class="verdict {html.escape(block.severity)}">{badge} {html.escape(block.text)}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
        body = "".join("<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row) + "</tr>" for row in block.rows)
        cap = f'<p class="cap">{html.escape(block.caption)}</p>' if block.caption else ""
        cls = ' class="wide"' if block.wide else ""
        return f'<div class="tbl">{cap}<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
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
        ident = f' id="{html.escape(section.anchor)}"' if section.anchor else ""
        cls = ' class="major"' if section.new_page else ""
        tag = f"h{section.level}"
        parts.append(f"<section{ident}{cls}><{tag}>{html.escape(section.title)}</{tag}>")
        parts.extend(_html_block(b) for b in section.blocks)
        parts.append("</section>")
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    return out


def _md_cell(value: Any) -> str:
    if isinstance(value, Link):
        return f"[{value.text}]({value.href})"
    if isinstance(value, Badge):
        return f"**{value.word}**"
    return fmt(value).replace("|", "\\|")


def _md_block(block: Any, base: Path) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {t}" for t in block.items)
    if isinstance(block, Verdict):
        return f"> **{Badge(block.severity).word}** — {block.text}"
    if isinstance(block, Table):
        head = "| " + " | ".join(str(c) for c in block.columns) + " |"
        sep = "| " + " | ".join("---" for _ in block.columns) + " |"
        rows = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
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
        anchor = f' <a id="{section.anchor}"></a>' if section.anchor else ""
        lines += [f"{'#' * section.level} {section.title}{anchor}", ""]
        for block in section.blocks:
            lines += [_md_block(block, out.parent), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
