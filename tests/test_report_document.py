from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medshield.report.document import Figure, Paragraph, Section, Table, Verdict, render_html, render_markdown  # noqa: E402


def test_html_is_self_contained_and_markdown_links(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "fig.png")
    plt.close(fig)
    sections = [Section("Threats", [Verdict("a <change> of 2/255", "high"), Paragraph("text"),
                                    Table(["attack", "acc"], [["pgd", 0.01234], ["fgsm", None]]),
                                    Figure(tmp_path / "fig.png", "robust accuracy")])]
    page = render_html("Audit", sections, tmp_path / "r" / "report.html").read_text()
    assert "data:image/png;base64," in page and "src=\"http" not in page and "&lt;change&gt;" in page
    assert "0.01234" in page and "–" in page
    md = render_markdown("Audit", sections, tmp_path / "r" / "report.md").read_text()
    assert "](../fig.png)" in md and "| pgd | 0.01234 |" in md
