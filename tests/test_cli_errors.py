"""Issue 19 finding 6: bad user input gets one ``error: ...`` line and exit code 2, never a traceback,
and nonsense values (eps outside (0, 1], ports outside 1-65535, limits below 1) are refused at start."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medshield.cli import app
from server_helpers import KEY

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medshield.models import create_model, save_run

    run = tmp_path_factory.mktemp("cli_errors") / "run"
    save_run(run, create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28),
             {"data": {"dataset": "demo"}})
    return run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(KEY + "\n")
    return path


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that should have failed must not start a server (it would block the test run)."""
    import uvicorn

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server started instead of refusing the options")

    monkeypatch.setattr(uvicorn, "run", refuse)


def one_error_line(args: list[str], fragment: str) -> str:
    result = runner.invoke(app, args, env={"MEDSHIELD_API_KEYS": "", "MEDSHIELD_DEBUG": ""})
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output and "0x" not in lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("extra, fragment", [
    (["--port", "99999"], "--port"),
    (["--port", "0"], "--port"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-request-mb", "-1"], "--max-request-mb"),
    (["--max-batch", "0", "--max-request-mb", "-1"], "must be"),
    (["--defense", "dnd", "--defense-param", "zzz=1"], "zzz"),
    (["--defense-param", "nu=abc"], "KEY=NUMBER"),
    (["--budget", "-3"], "budget"),
    (["--rate", "0"], "rate"),
    (["--trusted-proxies", "not-an-ip"], "not-an-ip"),
    (["--state", "ftp://x"], "--state"),
])
def test_serve_refuses_nonsense_at_start(run_dir: Path, keys: Path, extra: list[str], fragment: str) -> None:
    one_error_line(["serve", "--run", str(run_dir), "--api-keys", str(keys), "--state", "memory",
                    "--audit-log", str(keys.parent / "audit.jsonl"), *extra], fragment)


@pytest.mark.parametrize("model, fragment", [
    ({"name": "smallcnn", "in_channels": "one"}, "in_channels"),
    ({"name": "smallcnn", "image_size": 28.5}, "image_size"),
    ({"name": 7}, "model.name"),
    ({"name": "smallcnn", "dropout": "high"}, "dropout"),
    ({"name": "smallcnn", "mean": "zero"}, "mean"),
    (["smallcnn"], "JSON objects"),
])
def test_malformed_config_json_types(tmp_path: Path, run_dir: Path, keys: Path, model: object, fragment: str) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "config.json").write_text(json.dumps({"model": model}))
    one_error_line(["serve", "--run", str(bad), "--api-keys", str(keys), "--state", "memory",
                    "--audit-log", str(tmp_path / "audit.jsonl")], fragment)


def test_blackbox_target_at_a_closed_port(tmp_path: Path) -> None:
    one_error_line(["blackbox", "--target", f"http://127.0.0.1:{closed_port()}", "--api-key", KEY, "--dataset", "demo",
                    "--out", str(tmp_path / "bb")], "cannot reach")


@pytest.mark.parametrize("eps", ["1/0", "2", "0", "-1/255", "nan"])
def test_eps_out_of_range_or_unparseable_cli(tmp_path: Path, run_dir: Path, eps: str) -> None:
    one_error_line(["attack", "--run", str(run_dir), "--dataset", "demo", "--attack", "fgsm", "--eps", eps, "--n", "2",
                    "--out", str(tmp_path / "a")], "eps")


@pytest.mark.parametrize("eps", ["1/0", "2"])
def test_eps_out_of_range_or_unparseable_yaml(tmp_path: Path, run_dir: Path, eps: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"whitebox": {"eps": [eps], "attacks": ["fgsm"], "n_images": 2},
                                   **{k: {"enabled": False} for k in ("clean", "transfer", "blackbox", "detection")}}))
    one_error_line(["audit", "--run", str(run_dir), "--config", str(cfg), "--out", str(tmp_path / "o")], "eps")


def test_blackbox_layout_is_checked_at_the_edge(tmp_path: Path, run_dir: Path) -> None:
    one_error_line(["blackbox", "--run", str(run_dir), "--dataset", "demo", "--layout", "nhwc", "--budgets", "10",
                    "--n-images", "1", "--out", str(tmp_path / "b")], "--layout")
