from __future__ import annotations

from medshield.data import load_demo
from medshield.defenses.inference import DefenseSpec
from medshield.evaluation.defended import defended_clean_metrics, pick_parameters, tradeoff_curve


def test_noise_costs_accuracy_and_flips(demo_model) -> None:  # noqa: ANN001
    ds = load_demo()
    none = defended_clean_metrics(demo_model, ds, DefenseSpec("none"))
    assert none["flip_rate"] == 0.0
    heavy = defended_clean_metrics(demo_model, ds, DefenseSpec.of("rnd", nu=0.3), repeats=2)
    assert heavy["flip_rate"] > 0.05 and heavy["repeats"] == 2
    again = defended_clean_metrics(demo_model, ds, DefenseSpec.of("rnd", nu=0.3), repeats=2)
    assert again == heavy  # seeded


def test_pick_parameters(demo_model) -> None:  # noqa: ANN001
    recs = tradeoff_curve(demo_model, load_demo(), {"rnd": [{"nu": 0.0}, {"nu": 5.0}]}, repeats=1)
    best = pick_parameters(recs, "rnd", "nu", max_drop=0.02)
    assert best is not None and best["nu"] == 0.0
