"""Issue 19 finding 5: budgets, blocks, detector history and the audit log in a real store (SQLite WAL
by default, Redis optional), shared by restarts and by several workers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from medshield.defenses.detection import StreamDetector
from medshield.defenses.limits import QueryLimiter
from medshield.server.state import LimitPolicy, RedisState, SQLiteState, State, open_state
from server_helpers import AUTH, KEY, make_client, png_bytes

pytest.importorskip("fastapi")
IMAGE = {"file": ("x.png", png_bytes(np.full((28, 28), 99, np.uint8)))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free 127.0.0.1 port (Debian's ``redis-server``, see .ci/run)."""
    pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"redis-server did not start: {proc.stderr.read().decode()[-300:] if proc.stderr else ''}")
            time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], State]:
    """Opens a fresh handle on one shared store each call (a restart or another worker)."""
    if request.param == "sqlite":
        return lambda: SQLiteState(tmp_path / "state.db")
    url = request.getfixturevalue("redis_url")
    prefix = f"t{time.monotonic_ns()}:"
    return lambda: RedisState(url, prefix=prefix)


def app_on(opener: Callable[[], State], tmp_path: Path, name: str, **kwargs: object):
    return make_client(tmp_path / name, state=opener(), **kwargs)


def test_budget_survives_a_restart_and_is_shared_by_two_workers(tmp_path: Path, opener: Callable[[], State]) -> None:
    a = app_on(opener, tmp_path, "a", limiter=QueryLimiter(budget=5))
    b = app_on(opener, tmp_path, "b", limiter=QueryLimiter(budget=5))
    statuses = [c.post("/v1/predict", files=IMAGE, headers=AUTH).status_code for c in (a, b, a, b, a, b)]
    assert statuses == [200] * 5 + [429]
    restarted = app_on(opener, tmp_path, "c", limiter=QueryLimiter(budget=5))
    response = restarted.post("/v1/predict", files=IMAGE, headers=AUTH)
    assert response.status_code == 429 and "5 queries used" in response.json()["detail"]


def test_concurrent_workers_never_grant_more_than_the_budget(opener: Callable[[], State]) -> None:
    policy = LimitPolicy(budget=40)
    stores = [opener(), opener()]
    granted: list[int] = []
    lock = threading.Lock()

    def worker(state: State) -> None:
        for _ in range(15):
            if state.acquire("k", 2, policy).allowed:
                with lock:
                    granted.append(2)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 40 and stores[0].used("k") == 40


def test_rate_bucket_is_shared(opener: Callable[[], State]) -> None:
    now = [100.0]
    a, b = opener(), opener()
    a.clock = b.clock = lambda: now[0]
    policy = LimitPolicy(rate=1.0, burst=3)
    assert a.acquire("k", 3, policy).allowed
    denied = b.acquire("k", 1, policy)
    assert not denied.allowed and denied.reason == "rate" and denied.retry_after == pytest.approx(1.0)
    now[0] += 2
    assert b.acquire("k", 2, policy).allowed and not a.peek("k", 1, policy).allowed


def test_blocks_and_detector_history_survive_a_restart(tmp_path: Path, opener: Callable[[], State]) -> None:
    def detector() -> StreamDetector:
        return StreamDetector(k=3, threshold=0.05)

    first = app_on(opener, tmp_path, "a", detector=detector())
    base = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    near = [(base + 0.001 * i).clamp(0, 1).tolist() for i in range(3)]
    assert first.post("/v1/predict", json={"images": near}, headers=AUTH).status_code == 200  # 3 queries: no k-NN yet
    second = app_on(opener, tmp_path, "b", detector=detector())  # a restart: a fresh detector object
    response = second.post("/v1/predict", json={"images": [(base + 0.004).clamp(0, 1).tolist()]}, headers=AUTH)
    assert response.status_code == 403 and "near-duplicate" in response.json()["detail"]
    third = app_on(opener, tmp_path, "c", detector=detector())
    fresh = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(5)).tolist()
    assert third.post("/v1/predict", json={"images": fresh}, headers=AUTH).status_code == 403  # still blocked
    records = opener().audit_records()
    assert [r["status"] for r in records if r["path"] == "/v1/predict"] == [200, 403, 403]


def test_open_state_specs(tmp_path: Path) -> None:
    from medshield.errors import MedShieldError
    from medshield.server.state import MemoryState

    assert isinstance(open_state(None), MemoryState) and isinstance(open_state("memory"), MemoryState)
    assert isinstance(open_state(tmp_path / "s.db"), SQLiteState)
    assert isinstance(open_state(f"sqlite:///{tmp_path / 't.db'}"), SQLiteState)
    with pytest.raises(MedShieldError, match="unknown --state"):
        open_state("ftp://x")
    with pytest.raises(MedShieldError, match="cannot reach"):
        pytest.importorskip("redis")
        open_state(f"redis://127.0.0.1:{free_port()}")
    db = SQLiteState(tmp_path / "wal.db")
    assert db._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_uvicorn_two_workers_and_a_restart_share_one_sqlite_state(tmp_path: Path) -> None:
    """`medshield serve --workers 2` as users run it: budget shared by both workers, kept across a restart."""
    import os
    import sys

    import httpx

    from medshield.models import create_model, save_run

    save_run(tmp_path / "run", create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28))
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")

    def start() -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "medshield.cli", "serve", "--run", str(tmp_path / "run"), "--port", str(port),
               "--api-keys", str(keys), "--budget", "6", "--workers", "2", "--state", str(tmp_path / "state.db"),
               "--audit-log", str(tmp_path / "audit.jsonl")]
        proc = subprocess.Popen(cmd, env={**os.environ, "MEDSHIELD_API_KEYS": ""}, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.3)
        proc.kill()
        pytest.fail("medshield serve --workers 2 did not start")

    def post(url: str) -> int:
        with httpx.Client(base_url=url, timeout=30) as c:  # a new connection each time: either worker may answer
            return c.post("/v1/predict", files=IMAGE, headers={**AUTH, "X-Forwarded-For": "203.0.113.9"}).status_code

    proc, url = start()
    try:
        statuses = [post(url) for _ in range(8)]
    finally:
        proc.terminate()
        proc.wait(30)
    assert statuses == [200] * 6 + [429] * 2
    proc, url = start()
    try:
        assert post(url) == 429
    finally:
        proc.terminate()
        proc.wait(30)
    from medshield.server.audit import read_audit

    records = [r for r in read_audit(tmp_path / "audit.jsonl") if r["path"] == "/v1/predict"]
    assert [r["status"] for r in records] == [200] * 6 + [429] * 3
    assert {r["client"] for r in records} == {"127.0.0.1"}
    assert len(SQLiteState(tmp_path / "state.db").audit_records()) == len(read_audit(tmp_path / "audit.jsonl"))
