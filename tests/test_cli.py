"""The CLI's contract: one-line errors with exit code 2, no tracebacks, nothing overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medshield.cli import app

runner = CliRunner()


def _err(result) -> str:  # noqa: ANN001
    return result.stderr if hasattr(result, "stderr") else result.output


def test_unknown_model_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--dataset", "demo", "--model", "resnt18", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    err = _err(r).strip()
    assert err.startswith("error:") and "did you mean 'resnet18'" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_missing_dataset_file(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--dataset", "breastmnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "breastmnist.npz" in _err(r)
    assert not (tmp_path / "r").exists()


def test_train_evaluate_and_no_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", "demo", "--epochs", "1", "--batch-size", "128", "--out", str(run)])
    assert r.exit_code == 0, _err(r)
    printed = json.loads(r.stdout)
    assert set(printed["test"]) == {"accuracy", "sensitivity", "specificity", "auc"}
    r = runner.invoke(app, ["evaluate", "--run", str(run), "--dataset", "demo", "--split", "test"])
    assert r.exit_code == 0 and json.loads(r.stdout)["test"]["accuracy"] == printed["test"]["accuracy"]
    before = (run / "model.safetensors").read_bytes()
    r = runner.invoke(app, ["train", "--dataset", "demo", "--epochs", "1", "--out", str(run)])
    assert r.exit_code == 2 and "--overwrite" in _err(r)
    assert (run / "model.safetensors").read_bytes() == before


def test_pickle_checkpoint_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    runner.invoke(app, ["train", "--dataset", "demo", "--epochs", "1", "--batch-size", "128", "--out", str(run)])
    torch.save({"w": torch.zeros(1)}, run / "model.safetensors")
    r = runner.invoke(app, ["evaluate", "--run", str(run), "--dataset", "demo"])
    assert r.exit_code == 2 and "pickle" in _err(r) and "Traceback" not in _err(r)


def test_wrong_dataset_for_model(tmp_path: Path) -> None:
    import numpy as np

    run = tmp_path / "run"
    runner.invoke(app, ["train", "--dataset", "demo", "--epochs", "1", "--batch-size", "128", "--out", str(run)])
    arrays = {f"{s}_images": np.zeros((8, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": (np.arange(8) % 4).reshape(8, 1).astype(np.uint8) for s in ("train", "val", "test")}
    np.savez(tmp_path / "octmnist.npz", **arrays)
    r = runner.invoke(app, ["evaluate", "--run", str(run), "--dataset", "octmnist", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "has 4 classes but the model predicts 2" in _err(r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["defend", "--dataset", "demo", "--defense", "noise", "--device", "cuda",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no CUDA GPU" in _err(r) and "Traceback" not in _err(r)


@pytest.mark.parametrize("args", [
    ["serve", "--run", "nowhere", "--defense", "rnd", "--defense-param", "m=0.1"],
    ["serve", "--run", "nowhere", "--defense", "rnd:m=0.1"],
    ["blackbox", "--run", "nowhere", "--out", "OUT", "--defense", "none,dnd:m"],
    ["blackbox", "--run", "nowhere", "--out", "OUT", "--budgets", "100,0"],
    ["attack", "--run", "nowhere", "--out", "OUT", "--eps", "2/255,300/255"],
    ["transfer", "--source", "a,b", "--out", "OUT", "--eps", "two"],
])
def test_bad_specs_are_one_line_before_any_work(args: list[str], tmp_path: Path) -> None:
    """Defense specs, budgets and eps are parsed at the edge: a bad one is a one-line error (exit 2)."""
    r = runner.invoke(app, [str(tmp_path / a) if a == "OUT" else a for a in args])
    err = _err(r).strip()
    assert r.exit_code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nowhere" not in err and not (tmp_path / "OUT").exists()  # refused before the run was looked at
