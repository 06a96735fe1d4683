"""Issue 19 finding 2-4 under load (slow, ~40 s): 4 clients sending valid images while a fifth sends
decoding bombs; the valid clients' p99 latency stays within 2x of the run without bombs and the audit
log holds exactly one line per request sent. Runs bench/bench_server_bombs.py's load test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_server_bombs.py"


@pytest.mark.slow
def test_bombs_do_not_slow_valid_clients_and_every_request_is_logged(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_server_bombs", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    res = bench.run_load(seconds=8.0, clients=4, workdir=tmp_path)
    print(res)
    a, b = res["without_bombs"], res["with_bombs"]
    assert a["valid_requests"] >= 20 and b["valid_requests"] >= 20
    assert set(a["statuses"]["valid"]) == {200} and set(b["statuses"]["valid"]) == {200}
    assert set(b["statuses"]["bomb"]) <= {413, 422} and sum(b["statuses"]["bomb"].values()) >= 5
    assert b["p99_ms"] <= 2 * a["p99_ms"], res
    assert res["audit_lines"] == res["requests_sent"], res
