"""A real uvicorn on a free loopback port, queried over the socket by RemoteClassifier."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medshield.defenses.limits import QueryLimiter
from server_helpers import KEY, expected_labels, make_client, serve_on_loopback

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def live_url(tmp_path: Path) -> Iterator[str]:
    with serve_on_loopback(make_client(tmp_path, limiter=QueryLimiter(budget=20)).app) as url:
        yield url


def test_live_server_over_loopback(live_url: str, tmp_path: Path) -> None:
    from medshield.server.client import AuthenticationError, RateLimited, RemoteClassifier

    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with RemoteClassifier(live_url, KEY, batch_size=5) as remote:
        assert remote.info()["input_shape"] == [1, 28, 28]
        assert remote.labels(images).tolist() == expected_labels(images)
        assert (remote.queries, remote.requests) == (12, 3)
        with pytest.raises(RateLimited, match="budget"):
            remote.labels(images)  # 5 more fit (17), then 5 would make 22 > 20
        assert remote.queries == 17
    with RemoteClassifier(live_url, "not-the-key-0123456789") as stranger, pytest.raises(AuthenticationError):
        stranger.labels(images[:1])


@pytest.mark.slow
def test_cli_serve_subprocess(tmp_path: Path) -> None:
    """`medshield serve` as users run it: a subprocess on a free loopback port, stopped afterwards."""
    import os
    import subprocess
    import sys

    from medshield.models import create_model, save_run
    from medshield.server.client import RemoteClassifier, RateLimited

    save_run(tmp_path / "run", create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    cmd = [sys.executable, "-m", "medshield.cli", "serve", "--run", str(tmp_path / "run"), "--port", str(port),
           "--api-keys", str(keys), "--budget", "4", "--audit-log", str(tmp_path / "audit.jsonl"),
           "--state", str(tmp_path / "state.db")]
    proc = subprocess.Popen(cmd, env={**os.environ, "MEDSHIELD_API_KEYS": ""}, stderr=subprocess.PIPE)
    try:
        remote = RemoteClassifier(f"http://127.0.0.1:{port}", KEY, batch_size=2)
        deadline = time.monotonic() + 60
        while True:
            try:
                info = remote.info()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"server did not start: {proc.stderr.read().decode()[-1000:] if proc.poll() is not None else ''}")
                time.sleep(0.3)
        assert info["budget"] == 4 and info["model"] == "smallcnn"
        assert remote.labels(torch.rand(4, 1, 28, 28)).shape == (4,)
        with pytest.raises(RateLimited):
            remote.labels(torch.rand(1, 1, 28, 28))
    finally:
        proc.terminate()
        proc.wait(20)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"path":"/v1/model","status":200' in lines[0]  # the model info request too
