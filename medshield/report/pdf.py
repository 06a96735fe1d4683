"""``report.pdf`` next to ``report.html``: printed by headless Chromium (A4, page numbers in the footer)
through playwright, or Chromium's own ``--print-to-pdf`` without playwright; where no Chromium exists,
a plain paginated PDF of the report's text and figures written with matplotlib (no extra dependency).

The browser is found as ``$MEDSHIELD_CHROMIUM``, then ``chromium``, ``chromium-browser`` or
``google-chrome`` on the PATH. It runs with no network, no sandbox (containers) and no GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshield.report.document import Badge, Bullets, Figure, Link, Paragraph, Table, Verdict, fmt

log = logging.getLogger(__name__)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
FOOTER = ('<div style="font-size:8px;width:100%;padding:0 12mm;color:#555;display:flex;justify-content:space-between">'
          '<span class="title"></span><span>page <span class="pageNumber"></span> of '
          '<span class="totalPages"></span></span></div>')


def chromium_path() -> str | None:
    env = os.environ.get("MEDSHIELD_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _playwright(exe: str, html: Path, pdf: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS[1:])
        try:
            page = browser.new_page()
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            page.emulate_media(media="print")
            page.pdf(path=str(pdf), format="A4", print_background=True, display_header_footer=True,
                     header_template="<span></span>", footer_template=FOOTER,
                     margin={"top": "14mm", "bottom": "16mm", "left": "12mm", "right": "12mm"})
        finally:
            browser.close()


def _chromium_cli(exe: str, html: Path, pdf: Path) -> None:
    cmd = [exe, *FLAGS, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    if not pdf.is_file() or pdf.stat().st_size == 0:
        raise RuntimeError("chromium wrote no PDF")


def write_pdf(html: str | Path, pdf: str | Path, sections: Sequence[Any] = (), title: str = "") -> str:
    """Print ``html`` to ``pdf``; returns the engine used: ``chromium (playwright)``, ``chromium`` or
    ``matplotlib`` (the fallback renders ``sections``: text and figures, no tables' styling)."""
    html, pdf = Path(html), Path(pdf)
    exe = chromium_path()
    if exe:
        for engine, fn in (("chromium (playwright)", _playwright), ("chromium", _chromium_cli)):
            try:
                fn(exe, html, pdf)
                return engine
            except Exception as exc:  # noqa: BLE001 - fall through to the next engine
                log.debug("%s could not print the report: %s", engine, exc)
    _matplotlib_pdf(sections, pdf, title)
    log.info("no usable Chromium: report.pdf written with matplotlib (text and figures only)")
    return "matplotlib"


def _lines(sections: Sequence[Any]) -> list[tuple[str, Any]]:
    """The report as (kind, content) items: text lines and figure paths."""
    def cell(v: Any) -> str:
        return v.text if isinstance(v, Link) else v.word if isinstance(v, Badge) else fmt(v)

    out: list[tuple[str, Any]] = []
    for sec in sections:
        out += [("blank", ""), ("head", sec.title)]
        for b in sec.blocks:
            if isinstance(b, Paragraph):
                out += [("text", t) for t in textwrap.wrap(b.text, 110)]
            elif isinstance(b, Verdict):
                out += [("text", t) for t in textwrap.wrap(f"[{Badge(b.severity).word}] {b.text}", 110)]
            elif isinstance(b, Bullets):
                for item in b.items:
                    out += [("text", t) for t in textwrap.wrap(item, 106, initial_indent="• ", subsequent_indent="  ")]
            elif isinstance(b, Table):
                out.append(("text", b.caption))
                for row in [b.columns, *b.rows]:
                    out += [("mono", t) for t in textwrap.wrap(" | ".join(cell(v) for v in row), 118)]
            elif isinstance(b, Figure):
                out.append(("figure", b))
    return out


def _matplotlib_pdf(sections: Sequence[Any], pdf: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    items = [("title", title), *_lines(sections)]
    page_no = 0

    def new_page() -> Any:
        nonlocal page_no
        page_no += 1
        fig = plt.figure(figsize=(8.27, 11.69))
        fig.text(0.5, 0.02, f"page {page_no}", ha="center", fontsize=8, color="#555")
        return fig

    with PdfPages(pdf) as doc:
        fig, y = new_page(), 0.95
        for kind, content in items:
            if kind == "figure":
                doc.savefig(fig)
                plt.close(fig)
                fig = new_page()
                ax = fig.add_axes((0.06, 0.12, 0.88, 0.8))
                ax.imshow(plt.imread(content.path))
                ax.axis("off")
                fig.text(0.06, 0.08, "\n".join(textwrap.wrap(content.caption, 110)), fontsize=8, va="top")
                doc.savefig(fig)
                plt.close(fig)
                fig, y = new_page(), 0.95
                continue
            size = {"title": 14, "head": 11}.get(kind, 7.5)
            if y < 0.06:
                doc.savefig(fig)
                plt.close(fig)
                fig, y = new_page(), 0.95
            fig.text(0.06, y, content, fontsize=size, family="monospace" if kind == "mono" else "sans-serif",
                     weight="bold" if kind in ("title", "head") else "normal", va="top")
            y -= 0.0135 * size / 7.5 + (0.004 if kind == "head" else 0.0)
        doc.savefig(fig)
        plt.close(fig)
