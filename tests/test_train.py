from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medshield import api
from medshield.data import load_demo
from medshield.errors import MedShieldError
from medshield.models import create_model
from medshield.models.augment import AffineAugment
from medshield.models.train import TrainConfig, loss_fn, train_model


def test_training_step_lowers_loss() -> None:
    ds = load_demo()
    x, y = ds.train.get(slice(0, 64))
    torch.manual_seed(0)
    model = create_model(name="smallcnn").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = float(loss_fn(model(x), y).detach())
    for _ in range(15):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    assert float(loss_fn(model(x), y)) < first * 0.8


def test_augment_is_seeded_and_bounded() -> None:
    x = torch.rand(4, 1, 28, 28)
    aug = AffineAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def _train(out: Path, epochs: int = 2, resume: bool = False, **kw) -> dict:
    cfg = TrainConfig(epochs=epochs, seed=7, batch_size=64)
    return api.train("demo", out, train_config=cfg, resume=resume, **kw)


def test_demo_training_contract(tmp_path: Path) -> None:
    metrics = _train(tmp_path / "run")
    for name in ("model.safetensors", "config.json", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        assert isinstance(saved["test"][key], float)
    assert saved["test"]["accuracy"] > 0.8 and isinstance(saved["train_seconds"], float)
    assert saved["test"]["ci"]["accuracy"][0] <= saved["test"]["accuracy"] <= saved["test"]["ci"]["accuracy"][1]
    assert metrics["epochs_run"] == 2
    ev = api.evaluate(tmp_path / "run")
    assert ev["accuracy"] == pytest.approx(saved["test"]["accuracy"])
    assert (tmp_path / "run" / "eval-test.json").is_file()


def test_seed_reproduces(tmp_path: Path) -> None:
    a = _train(tmp_path / "a", epochs=1)
    b = _train(tmp_path / "b", epochs=1)
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = _train(tmp_path / "full", epochs=3)
    import medshield.models.train as train_mod

    real = train_mod._run_epoch
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_run_epoch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "part", epochs=3)
    monkeypatch.setattr(train_mod, "_run_epoch", real)
    resumed = _train(tmp_path / "part", epochs=3, resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "part" / "model.safetensors").read_bytes()


def test_existing_run_not_overwritten(tmp_path: Path) -> None:
    _train(tmp_path / "run", epochs=1)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(MedShieldError, match="already holds a run"):
        _train(tmp_path / "run", epochs=1)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_single_logit_training(tmp_path: Path) -> None:
    m = _train(tmp_path / "sig", epochs=2, single_logit=True)
    assert m["test"]["accuracy"] > 0.7
    assert json.loads((tmp_path / "sig" / "config.json").read_text())["model"]["num_classes"] == 1


def test_early_stopping(tmp_path: Path) -> None:
    ds = load_demo()
    model = create_model(name="smallcnn")
    cfg = TrainConfig(epochs=6, patience=1, lr=1e-9, seed=0, batch_size=256)  # lr ~0: no improvement
    state = train_model(model, ds, tmp_path, cfg)
    assert state.stopped_early and state.next_epoch < 6
