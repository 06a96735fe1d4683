"""Black-box runner summaries, the Markdown table with GBBA/HSJA ratios, and the figures."""

from __future__ import annotations

import pytest

from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import BLACKBOX_DEFENSES, BlackboxConfig, summarise
from medshield.report.blackbox_plots import markdown_table, plot_l2_vs_queries, plot_strips


def job(l2_by_budget: dict[int, list[float]]) -> dict:
    return {"l2": {str(b): v for b, v in l2_by_budget.items()}, "seconds": 2.0,
            "first_adversarial": {str(b): [0.5] * 4 for b in l2_by_budget}}


def test_summary_table_and_plots(tmp_path) -> None:  # noqa: ANN001
    cfg = BlackboxConfig(budgets=[1000, 5000], n_bootstrap=200)
    hsja = summarise("hsja", "none", [job({1000: [2.0, 4.0], 5000: [1.0, 2.0]}), job({1000: [3.0], 5000: [1.0]})], cfg)
    gbba = summarise("gbba", "none", [job({1000: [1.0, 2.0, float("inf")], 5000: [0.5, 1.0, 1.5]})], cfg)
    assert [r["budget"] for r in hsja] == [1000, 5000]
    assert hsja[0]["mean_l2"] == pytest.approx(3.0) and hsja[0]["median_l2"] == pytest.approx(3.0)
    assert hsja[0]["n_images"] == 3 and hsja[0]["seconds"] == pytest.approx(4.0)
    lo, hi = hsja[0]["mean_l2_ci"]
    assert 2.0 <= lo <= 3.0 <= hi <= 4.0
    assert gbba[0]["success_rate"] == pytest.approx(2 / 3) and gbba[0]["l2_per_image"][2] is None
    summary = {"records": hsja + gbba, "image_shape": [1, 2, 2], "first_image": [0.0] * 4,
               "strips": {"hsja|none": job({1000: [], 5000: []})["first_adversarial"]}}
    table = markdown_table(summary)
    assert "| none | GBBA/HSJA | mean | 0.500 | 0.750 |" in table
    assert plot_l2_vs_queries(summary, tmp_path / "a.png").stat().st_size > 1000
    assert plot_strips(summary, tmp_path / "b.png").stat().st_size > 1000


def test_defense_registry_hook() -> None:
    assert BLACKBOX_DEFENSES.names() == ["dnd", "none", "rnd"]
    with pytest.raises(MedShieldError, match="did you mean 'none'"):
        BLACKBOX_DEFENSES.get("nne")
