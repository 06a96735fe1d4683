from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from medshield.evaluation.executor import Job, run_jobs
from medshield.evaluation.store import RecordStore


def square(x: int) -> dict[str, int]:
    return {"x": x, "y": x * x}


JOBS = [Job(f"j{i}", "test_executor:square", {"x": i}) for i in range(4)]


def test_inline_and_resume(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s.json")
    store.put("j1", {"x": 1, "y": -1})  # a finished job is not recomputed
    out = run_jobs(JOBS, store)
    assert [r["y"] for r in out] == [0, -1, 4, 9]


def test_process_pool_matches_inline(tmp_path: Path) -> None:
    inline = run_jobs(JOBS, RecordStore(tmp_path / "a.json"))
    pooled = run_jobs(JOBS, RecordStore(tmp_path / "b.json"), workers=2)
    assert inline == pooled


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        run_jobs([JOBS[0], JOBS[0]], RecordStore(tmp_path / "c.json"))
    with pytest.raises(Exception, match="unknown executor"):
        run_jobs(JOBS, RecordStore(tmp_path / "c.json"), executor="dask")


@pytest.mark.slow
def test_ray_matches_inline(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medshield[ray]'")
    inline = run_jobs(JOBS, RecordStore(tmp_path / "a.json"))
    on_ray = run_jobs(JOBS, RecordStore(tmp_path / "r.json"), executor="ray", workers=2)
    assert inline == on_ray


def test_ray_resources_per_job() -> None:
    from medshield.campaign.config import load_config
    from medshield.evaluation.executor import ray_options

    assert ray_options(0) == {"num_cpus": 1}
    assert ray_options(0.5) == {"num_cpus": 1, "num_gpus": 0.5}
    with pytest.raises(ValueError):
        ray_options(-1)
    assert load_config(gpus_per_job=1).gpus_per_job == 1
    with pytest.raises(Exception, match="gpus_per_job"):
        load_config(gpus_per_job=-1)


def test_nothing_to_run_starts_no_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign whose jobs are all stored (or a stage with no jobs) starts no Ray cluster: starting
    one costs seconds of wall time for nothing."""
    import medshield.evaluation.executor as ex

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an executor was started with nothing to run")

    monkeypatch.setattr(ex, "_run_ray", refuse)
    monkeypatch.setattr(ex, "_run_pool", refuse)
    store = RecordStore(tmp_path / "s.json")
    assert run_jobs([], store, executor="ray", workers=2) == []
    run_jobs(JOBS, store)
    assert [r["y"] for r in run_jobs(JOBS, store, executor="ray", workers=2)] == [0, 1, 4, 9]


def test_local_ray_start_holds_back_only_the_auth_enabled_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the local cluster drops Ray's "token authentication is enabled" notice (printed on every
    start) and nothing else: a notice that authentication is off, or any other warning, still shows."""
    import logging

    import medshield.evaluation.executor as ex

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    notice = logging.getLogger(ex.RAY_AUTH_LOGGER)
    notice.addHandler(handler := Keep())

    def init(**kwargs: object) -> None:
        for message in ("Token authentication is enabled for this Ray cluster.",
                        "Token authentication is disabled for this Ray cluster.", "another warning"):
            notice.warning(message)

    fake = types.SimpleNamespace(is_initialized=lambda: False, shutdown=lambda: None, init=init,
                                 remote=lambda **kw: (_ for _ in ()).throw(RuntimeError("stop here")))
    monkeypatch.setitem(sys.modules, "ray", fake)
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            ex._run_ray(JOBS, RecordStore(tmp_path / "s.json"), 2, None, lambda *a, **k: None)
        notice.warning("Token authentication is enabled for this Ray cluster.")  # outside the start: shown
    finally:
        notice.removeHandler(handler)
    assert seen == ["Token authentication is disabled for this Ray cluster.", "another warning",
                    "Token authentication is enabled for this Ray cluster."]
