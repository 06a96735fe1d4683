"""A failed command leaves no new files or folders behind; existing folders and interrupted work stay."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medshield.cli import app
from medshield.errors import MedShieldError, new_ancestor, removed_on_user_error

runner = CliRunner()


def test_train_without_imagenet_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))  # no cached ImageNet weights
    out = tmp_path / "runs" / "ct"
    r = runner.invoke(app, ["train", "--dataset", "demo", "--model", "resnet18", "--pretrained", "imagenet",
                            "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 2
    assert not (tmp_path / "runs").exists()  # neither the run nor the parent it created


def test_existing_folder_is_kept(tmp_path: Path) -> None:
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    with pytest.raises(MedShieldError), removed_on_user_error([keep / "new"], (MedShieldError,)):
        (keep / "new").mkdir()
        raise MedShieldError("bad")
    assert (keep / "notes.txt").exists() and not (keep / "new").exists()


def test_interruption_keeps_state_for_resume(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    with pytest.raises(KeyboardInterrupt), removed_on_user_error([out], (MedShieldError,)):
        out.mkdir()
        (out / "jobs.json").write_text("{}")
        raise KeyboardInterrupt
    assert (out / "jobs.json").exists()


def test_new_ancestor(tmp_path: Path) -> None:
    assert new_ancestor(tmp_path) is None
    assert new_ancestor(tmp_path / "a" / "b") == (tmp_path / "a").absolute()
