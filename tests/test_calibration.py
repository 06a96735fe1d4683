"""Calibrated noise defenses (issue 22): the chosen setting fits the tolerance on the validation split
and the next measured step up does not; explicit parameters bypass calibration; seeded; records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medshield.errors import MedShieldError
from medshield.evaluation.calibration import (
    CalibrationConfig,
    Cost,
    Tolerance,
    bracket_search,
    calibrate_inference,
    needs_calibration,
    search_axis,
)


@pytest.fixture(scope="module")
def demo_data(demo_run: Path) -> Any:
    from medshield.api import load_run_and_data

    model, ds, _ = load_run_and_data(demo_run, None, None)
    return model, ds


def _cal(demo_data: Any, defense: str, given: dict[str, float], cfg: CalibrationConfig) -> dict[str, Any]:
    """Calibration on 150 validation images (measured on 150 test images): small enough for CI."""
    model, ds = demo_data
    val, test = ds.split("val"), ds.split("test")
    rows = list(range(150))
    return calibrate_inference(model, val.images(rows), val.labels[rows], ds.positive_class, defense, given, cfg,
                               test=(test.images(rows), test.labels[rows]))


@pytest.fixture(scope="module")
def calibrated(demo_data: Any) -> dict[str, dict[str, Any]]:
    cfg = CalibrationConfig(tolerance=Tolerance(0.01, 0.01), repeats=2, refine_steps=4, seed=0)
    return {d: _cal(demo_data, d, {}, cfg) for d in ("rnd", "dnd")}


@pytest.mark.parametrize("defense", ["rnd", "dnd"])
def test_calibration_fits_tolerance_and_next_step_exceeds(calibrated: dict[str, dict[str, Any]], defense: str) -> None:
    cal = calibrated[defense]
    assert cal["feasible"] and cal["value"] > 0
    assert cal["validation"]["accuracy_drop"] <= 0.01 + 1e-9 and cal["validation"]["sensitivity_drop"] <= 0.01 + 1e-9
    nxt = next(p for p in cal["curve"] if p["value"] == cal["next_value"])
    assert nxt["value"] > cal["value"]
    assert nxt["accuracy_drop"] > 0.01 or nxt["sensitivity_drop"] > 0.01
    assert not nxt["within"]
    # refinement leaves the crossing bracketed tightly: within a factor 2^(1/2^4) (plus rounding)
    assert cal["next_value"] / cal["value"] < 1.05
    # every measured value below the chosen one fits, every one above it was not accepted
    assert all(p["within"] for p in cal["curve"] if p["value"] <= cal["value"])
    # the record carries what a report needs
    for key in ("params", "tolerance", "validation", "test", "curve", "seed", "repeats"):
        assert key in cal
    assert set(cal["test"]) >= {"accuracy_drop", "accuracy_drop_se", "sensitivity_drop", "sensitivity_drop_se"}
    assert cal["test"]["accuracy_drop_se"] >= 0 and cal["test"]["n"] == 150
    if defense == "dnd":
        assert cal["params"]["n"] == pytest.approx(50 * cal["params"]["m"], rel=1e-3)  # n tied to m


def test_looser_tolerance_allows_more_noise_and_same_seed_same_choice(calibrated: dict[str, dict[str, Any]],
                                                                      demo_data: Any) -> None:
    strict = calibrated["rnd"]
    loose = _cal(demo_data, "rnd", {}, CalibrationConfig(tolerance=Tolerance(0.05, 0.05), repeats=2, refine_steps=4))
    again = _cal(demo_data, "rnd", {}, CalibrationConfig(tolerance=Tolerance(0.01, 0.01), repeats=2, refine_steps=4))
    # same grid and refinement, common random numbers: what fits 1 point fits 5 points
    assert loose["value"] > strict["value"]
    assert again["params"] == strict["params"] and again["curve"] == strict["curve"]


def test_partial_dnd_spec_searches_the_missing_parameter() -> None:
    assert search_axis("dnd", {"n": 0.3}).params(0.02) == {"m": 0.02, "n": 0.3}
    assert search_axis("dnd", {"m": 0.01}).params(0.5) == {"n": 0.5, "m": 0.01}
    assert needs_calibration("rnd", {}) and needs_calibration("dnd", {"n": 0.5})
    assert not needs_calibration("rnd", {"nu": 0.02}) and not needs_calibration("dnd", {"m": 0.01, "n": 0.5})
    assert not needs_calibration("none", {})
    with pytest.raises(MedShieldError, match="cannot be calibrated"):
        search_axis("median", {})
    with pytest.raises(MedShieldError, match="fraction"):
        Tolerance(accuracy=1.5)


def test_bracket_search_on_a_known_curve() -> None:
    """Cost rises linearly: 1 point of accuracy per 0.01 of noise -> the crossing is at 0.01."""
    def cost(v: float) -> Cost:
        return Cost(0.9, 0.9, v, 0.0, v / 2, 0.0, 100)

    found = bracket_search(cost, Tolerance(0.01, 0.01), start=0.001, upper=1.0, refine_steps=8)
    assert found.feasible and 0.0095 < found.value <= 0.01 < found.next_value < 0.0105
    nothing = bracket_search(lambda v: Cost(0.5, 0.5, 0.2, 0.0, 0.2, 0.0, 10), Tolerance(), 0.01, 1.0)
    assert not nothing.feasible and nothing.value == 0
    everything = bracket_search(lambda v: Cost(0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 10), Tolerance(), 0.01, 1.0)
    assert everything.value == 0.64 and everything.next_value is None


FAST = CalibrationConfig(tolerance=Tolerance(0.01, 0.01), repeats=2, refine_steps=2, seed=0)


def test_blackbox_calibrates_parameterless_specs_only(demo_run: Path, tmp_path: Path) -> None:
    """``rnd`` is calibrated (records carry params, tolerance, validation and test costs); ``rnd:nu=0.02``
    means nu = 0.02; a resumed run reuses the stored calibration."""
    from medshield.api import blackbox
    from medshield.defenses.inference import DefenseSpec

    specs = [DefenseSpec.parse(s) for s in ("none", "rnd", "rnd:nu=0.02")]
    kwargs = dict(attacks=["hsja"], budgets=[60], n_images=1, defenses=specs, calibration=FAST)
    summary = blackbox(demo_run, tmp_path, **kwargs)
    (cal,) = summary["calibrations"]
    assert cal["spec"] == "rnd" and cal["resolved"] == f"rnd:nu={cal['params']['nu']:g}"
    by_spec = {r["defense_spec"]: r for r in summary["records"]}
    assert set(by_spec) == {"none", "rnd:nu=0.02", cal["spec_label"]}
    rec = by_spec[cal["spec_label"]]
    assert rec["defense_params"] == cal["params"]
    assert rec["calibration"]["tolerance"] == {"accuracy": 0.01, "sensitivity": 0.01}
    assert set(rec["calibration"]["validation"]) >= {"accuracy_drop", "accuracy_drop_se", "sensitivity_drop"}
    assert "test" in rec["calibration"]
    assert "calibration" not in by_spec["rnd:nu=0.02"] and by_spec["rnd:nu=0.02"]["defense_params"] == {"nu": 0.02}
    assert (tmp_path / "calibration.png").is_file() and "Calibrated defenses" in (tmp_path / "blackbox.md").read_text()
    again = blackbox(demo_run, tmp_path, **kwargs)
    assert again["calibrations"] == summary["calibrations"]


def test_audit_calibrates_by_default_and_says_so(demo_run: Path, tmp_path: Path) -> None:
    from medshield.api import audit
    from medshield.campaign.config import CampaignConfig

    cfg = CampaignConfig.model_validate({
        "clean": {"bootstrap": 0}, "whitebox": {"enabled": False}, "transfer": {"enabled": False},
        "detection": {"enabled": False}, "calibration": {"repeats": 2, "refine_steps": 2, "max_clean_drop": 0.02},
        "blackbox": {"attacks": ["hsja"], "budgets": [60], "n_images": 1, "shard_size": 1, "defenses": ["none", "dnd"]}})
    default = CampaignConfig()
    assert default.calibration.enabled and all(not d.explicit for d in default.blackbox.defenses)  # calibrated by default
    res = audit([str(demo_run)], tmp_path, config=cfg)
    (cal,) = res["calibrations"]
    assert cal["defense"] == "dnd" and cal["tolerance"] == {"accuracy": 0.02, "sensitivity": 0.02}
    dnd = [r for r in res["blackbox"] if r["defense"] == "dnd"]
    assert dnd and all(r["calibration"]["params"] == cal["params"] for r in dnd)
    report = (tmp_path / "report.md").read_text()
    assert "Calibrated defenses" in report and "evaluated calibrated" in report
    assert (tmp_path / "calibration.png").is_file()


def test_serving_defense_calibrates_once_before_serving(demo_run: Path) -> None:
    from medshield.api import serving_defense
    from medshield.defenses.inference import DefenseSpec

    explicit = DefenseSpec.parse("dnd:m=0.01:n=0.5")
    assert serving_defense(demo_run, explicit, None, FAST) is explicit
    assert serving_defense(demo_run, DefenseSpec.parse("rnd"), None, None) == DefenseSpec.parse("rnd")
    served = serving_defense(demo_run, DefenseSpec.parse("rnd"), None, FAST)
    assert served.name == "rnd" and set(served.explicit) == {"nu"} and served.explicit["nu"] > 0


def test_cli_rejects_a_bad_tolerance(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medshield.cli import app

    r = CliRunner().invoke(app, ["blackbox", "--run", str(tmp_path), "--defense", "rnd", "--max-clean-drop", "5",
                                 "--out", str(tmp_path / "bb")])
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert r.exit_code == 2 and err.startswith("error:") and "fraction in [0, 1)" in err
