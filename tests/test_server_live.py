"""A real uvicorn on a free loopback port, queried over the socket by RemoteClassifier."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medshield.defenses.limits import QueryLimiter
from server_helpers import KEY, expected_labels, make_client

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def live_url(tmp_path: Path) -> Iterator[str]:
    app = make_client(tmp_path, limiter=QueryLimiter(budget=20)).app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port chosen by the OS
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


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
