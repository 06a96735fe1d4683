"""Detection evaluation (attack streams flagged, benign false positives), the clean-input trade-off
sweeps and the two CLI commands on demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medshield.cli import app
from medshield.data import load_demo
from medshield.evaluation.defended import tradeoff_sweeps
from medshield.evaluation.detection import (DetectionConfig, benign_streams, build_detector, detection_markdown,
                                            run_detection, shift_images)
from medshield.report.tradeoff_plot import plot_tradeoff, tradeoff_markdown

runner = CliRunner()
SMALL = dict(attacks=("hsja", "opt"), n_images=2, budget=300, within=200, n_streams=10, stream_sizes=(20, 60),
             calibration_images=600)


def test_shift_and_benign_streams() -> None:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    shifted = shift_images(x, 2, g)
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
    assert torch.equal(shift_images(x, 0, g), x)
    cfg = DetectionConfig(n_streams=4, stream_sizes=(2, 5), noise_sigma=0.02)
    for kind in ("clean", "noisy", "shifted"):
        streams = benign_streams(x, kind, cfg, torch.Generator().manual_seed(0))
        assert len(streams) == 4 and all(2 <= s.shape[0] <= 5 for s in streams)
        assert all(0 <= float(s.min()) and float(s.max()) <= 1 for s in streams)
    noisy = benign_streams(x, "noisy", cfg, torch.Generator().manual_seed(0))[0]
    clean = benign_streams(x, "clean", cfg, torch.Generator().manual_seed(0))[0]
    assert 0.005 < float((noisy - clean).std()) < 0.03
    with pytest.raises(ValueError, match="kind"):
        benign_streams(x, "other", cfg, g)


def test_attack_streams_flagged_benign_not(demo_model) -> None:  # noqa: ANN001
    ds = load_demo()
    cfg = DetectionConfig(**SMALL)
    summary = run_detection(demo_model, ds, cfg)
    by = {r["kind"]: r for r in summary["records"]}
    assert set(by) == {"attack:hsja", "attack:opt", "benign:clean", "benign:noisy", "benign:shifted"}
    for attack in ("attack:hsja", "attack:opt"):
        assert by[attack]["n_streams"] == 2 and by[attack]["flagged_within_200"] == 1.0
        assert by[attack]["flagged_at_max"] <= 200 and by[attack]["suspicious_fraction"] > 0.5
    for kind in ("benign:clean", "benign:noisy", "benign:shifted"):
        assert by[kind]["n_streams"] == 10 and by[kind]["flagged_fraction"] == 0.0
    # calibrated on train images only: the same threshold as a detector built from the train split
    assert summary["threshold"] == build_detector(ds.train.images(), cfg).threshold
    assert "| attack:hsja | 2 | 100.0% | 100.0% |" in detection_markdown(summary)


def test_tradeoff_sweeps_pick_and_plot(demo_model, tmp_path: Path) -> None:  # noqa: ANN001
    s = tradeoff_sweeps(demo_model, load_demo(), nu_grid=[0.0, 0.02, 2.0], m_grid=[0.0, 2.0], n_grid=[0.0, 50.0],
                        repeats=1)
    assert [r["sweep"] for r in s["records"]].count("rnd_nu") == 3
    assert s["chosen"]["rnd_nu"]["nu"] == 0.02 and s["chosen"]["dnd_m"]["m"] == 0.0
    assert s["chosen"]["dnd_n"]["n"] == 0.0  # n=50 drowns the scores: more than 2 points lost
    heavy = next(r for r in s["records"] if r["sweep"] == "rnd_nu" and r["nu"] == 2.0)
    assert heavy["flip_rate"] > 0.1 and heavy["accuracy"] < s["undefended_accuracy"] - 0.02
    assert plot_tradeoff(s, tmp_path / "t.png").stat().st_size > 1000
    assert "| rnd_nu | rnd | nu=0.02 |" in tradeoff_markdown(s)


def test_cli_detect_tradeoff_and_bad_defense_spec(demo_run: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["defense-tradeoff", "--run", str(demo_run), "--out", str(tmp_path / "t"), "--nu", "0,0.05",
                            "--m", "0,0.05", "--n", "0,1", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    assert {"rnd_nu", "dnd_m", "dnd_n"} <= set(json.loads(r.stdout)["chosen"])
    assert all((tmp_path / "t" / f).is_file() for f in ("tradeoff.json", "tradeoff.md", "tradeoff.png"))
    r = runner.invoke(app, ["detect", "--run", str(demo_run), "--out", str(tmp_path / "d"), "--attack", "hsja",
                            "--n-images", "1", "--budget", "200", "--within", "200", "--n-streams", "3"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "d" / "detection.json").read_text())
    assert [x["kind"] for x in saved["records"]][0] == "attack:hsja" and (tmp_path / "d" / "detection.md").is_file()
    r = runner.invoke(app, ["blackbox", "--run", str(demo_run), "--out", str(tmp_path / "b"), "--defense", "none,rnd:nu"])
    assert r.exit_code == 2 and "expected NAME:KEY=NUMBER" in r.output and "Traceback" not in r.output
