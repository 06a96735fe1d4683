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
    ["attack", "--run", "nowhere", "--out", "OUT", "--attacks", "autoattack", "--square-queries", "0"],
    ["attack", "--run", "nowhere", "--out", "OUT", "--attacks", "pgd", "--square-queries", "100"],
    ["transfer", "--source", "a,b", "--out", "OUT", "--eps", "two"],
])
def test_bad_specs_are_one_line_before_any_work(args: list[str], tmp_path: Path) -> None:
    """Defense specs, budgets and eps are parsed at the edge: a bad one is a one-line error (exit 2)."""
    r = runner.invoke(app, [str(tmp_path / a) if a == "OUT" else a for a in args])
    err = _err(r).strip()
    assert r.exit_code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nowhere" not in err and not (tmp_path / "OUT").exists()  # refused before the run was looked at


def test_commands_grouped_and_one_option_vocabulary() -> None:
    """Commands sit in help panels by group; option names are shared across commands; old names still
    parse but are hidden from help."""
    import typer.main

    root = typer.main.get_command(app)
    panels = {name: getattr(cmd, "rich_help_panel", None) for name, cmd in root.commands.items()}
    assert panels["train"] == panels["evaluate"] == panels["datasets"] == "Data and models"
    assert panels["attack"] == panels["transfer"] == "White-box attacks"
    assert panels["blackbox"] == "Black-box attacks"
    assert panels["defend"] == panels["detect"] == panels["defense-tradeoff"] == panels["defense-report"] == "Defenses"
    assert panels["serve"] == "Serving"
    assert panels["audit"] == panels["compare"] == panels["demo"] == panels["reproduce"] == "Audit and reproduce"
    assert panels["target"] == "Target cards" and set(root.commands["target"].commands) >= {"check", "findings", "formats"}

    def options(cmd, hidden: bool) -> set[str]:  # noqa: ANN001
        return {o for p in cmd.params if bool(getattr(p, "hidden", False)) == hidden for o in p.opts}

    commands = {name: cmd for name, cmd in root.commands.items() if name not in ("reproduce", "target")}
    commands |= {f"target {name}": cmd for name, cmd in root.commands["target"].commands.items()}
    visible = {name: options(cmd, False) for name, cmd in commands.items()}
    for name, opts in visible.items():
        assert not opts & {"--eval-n", "--runs", "--source-runs"}, name
        if name != "defense-tradeoff":  # its --n is DND's score-noise level n (Byun et al.), not a count
            assert "--n" not in opts, name
    assert {"--attacks", "--n-images", "--eps", "--run", "--target"} <= visible["attack"]
    assert {"--attacks", "--n-images", "--budgets", "--defenses", "--run", "--target", "--surrogate"} <= visible["blackbox"]
    assert {"--training-defense", "--n-images", "--eval-attacks", "--source"} <= visible["defend"]
    assert {"--run", "--target", "--n-images"} <= visible["transfer"] and "--source" not in visible["transfer"]
    assert {"--attacks", "--budget", "--n-images", "--target"} <= visible["detect"]
    assert {"--defense", "--key-budget"} <= visible["serve"]  # one spec such as rnd:nu=0.04
    assert {"--fail-on", "--target", "--run"} <= visible["audit"] and "--fail-on" in visible["compare"]
    assert "--n-images" in visible["target check"] and {"--budgets", "--eps", "--n-images"} <= visible["target findings"]
    hidden = {name: options(cmd, True) for name, cmd in commands.items()}
    assert {"--attack", "--n"} <= hidden["attack"] and {"--defense", "--attack"} <= hidden["blackbox"]
    assert {"--defense", "--eval-n"} <= hidden["defend"] and {"--source", "--n"} <= hidden["transfer"]
    assert "--budget" in hidden["serve"] and "--runs" in hidden["defense-report"] and "--n" in hidden["target check"]


def test_old_option_names_still_work(tmp_path: Path) -> None:
    """A hidden old name gives what its new name gives: here both refuse the same bad value the same way."""
    for old, new in ((["--attack", "pdg"], ["--attacks", "pdg"]), (["--n", "0"], ["--n-images", "0"])):
        errs = [_err(runner.invoke(app, ["attack", "--run", "nowhere", "--out", str(tmp_path / "o"), *args])).strip()
                for args in (old, new)]
        assert errs[0] == errs[1] and errs[0].startswith("error:")
    r = runner.invoke(app, ["defense-report", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--run" in _err(r)


def test_square_queries_reach_the_attacks_and_their_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--square-queries sets AutoAttack's Square budget (and standalone Square's), beside --steps; the
    attack's repr, part of every record's job identity, carries it."""
    from medshield.attacks import create_attack
    from medshield.cli import whitebox

    seen: dict = {}
    monkeypatch.setattr(whitebox.api, "attack", lambda *a, **kw: seen.update(kw) or [])
    r = runner.invoke(app, ["attack", "--run", "r", "--out", str(tmp_path / "o"), "--attacks", "pgd,autoattack,square",
                            "--steps", "5", "--square-queries", "200"])
    assert r.exit_code == 0, _err(r)
    assert seen["attack_kwargs"] == {"pgd": {"steps": 5}, "autoattack": {"steps": 5, "square_queries": 200},
                                     "square": {"steps": 200}}
    assert "square_queries=200" in repr(create_attack("autoattack", norm="linf", **seen["attack_kwargs"]["autoattack"]))
    runner.invoke(app, ["attack", "--run", "r", "--out", str(tmp_path / "o"), "--attacks", "autoattack"])
    assert seen["attack_kwargs"] is None  # the standard version's 5000 by default


def test_console_entry_point() -> None:
    import tomllib

    from medshield import cli

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["medshield"] == "medshield.cli:main" and callable(cli.main)
