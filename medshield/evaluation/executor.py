"""Run a campaign's independent jobs inline, in a local process pool, or on a Ray cluster.

A :class:`Job` names its function by import path (``"package.module:function"``) with JSON-able
keyword arguments, so it travels to any worker; each job is deterministic from its arguments, so
results are identical whichever executor ran them. Finished jobs are kept in a
:class:`RecordStore` and skipped on re-run (kill a campaign, run it again, it continues).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from medshield.errors import MedShieldError
from medshield.evaluation.store import RecordStore
from medshield.progress import progress_bar

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """``inputs``: everything that determines the job's result (its identity); a stored record from
    other inputs is never reused (see :class:`RecordStore`)."""

    key: str
    fn: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The key as progress lines show it: without embedded JSON settings (``|{...}``)."""
        return "|".join(p for p in self.key.split("|") if not p.startswith("{"))


def resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run_job(fn: str, kwargs: dict[str, Any], threads: int | None = None) -> Any:
    """Worker entry point: limit torch threads, import the function, call it."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return resolve(fn)(**kwargs)


def run_jobs(
    jobs: Iterable[Job],
    store: RecordStore,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    description: str = "jobs",
    threads: int | None = None,
    gpus: float = 0,
) -> list[Any]:
    """Run the jobs not yet in ``store``; returns every job's record in job order.

    ``threads`` fixes torch's thread count inside every job whatever the executor (floating-point
    reductions can depend on it, so a fixed value keeps results bit-identical across executors).
    ``gpus``: what Ray reserves per job (``num_gpus``), so a cluster with N GPUs runs N GPU jobs at once."""
    jobs = list(jobs)
    if len({j.key for j in jobs}) != len(jobs):
        raise ValueError("job keys must be unique")
    store.check((j.key, j.inputs) for j in jobs)  # stale records: refused before any work (or recomputed)
    todo = [j for j in jobs if not store.current(j.key, j.inputs)]
    if executor not in EXECUTORS:
        raise MedShieldError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with progress_bar(description, len(jobs)) as advance:
        advance(len(jobs) - len(todo))
        if not todo:  # nothing to run: no Ray cluster or process pool is started (seconds saved)
            pass
        elif executor == "ray":
            _run_ray(todo, store, workers, address, advance, threads, gpus)
        elif workers == 1:
            _run_inline(todo, store, advance, threads)
        else:
            _run_pool(todo, store, workers, advance, threads)
    return [store.get(j.key) for j in jobs]


def _run_inline(todo: list[Job], store: RecordStore, advance: Callable[..., None], threads: int | None) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        for job in todo:
            store.put(job.key, run_job(job.fn, job.kwargs, threads), job.inputs)
            advance(1, info=job.label)
    finally:
        torch.set_num_threads(before)


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _run_pool(todo: list[Job], store: RecordStore, workers: int, advance: Callable[..., None],
              threads: int | None = None) -> None:
    import multiprocessing as mp

    threads = threads or _threads_per_worker(workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(run_job, j.fn, j.kwargs, threads): j for j in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                store.put(job.key, future.result(), job.inputs)
                advance(1, info=job.label)


def ray_options(gpus: float) -> dict[str, float]:
    """Ray resources per job: one CPU slot, and ``gpus`` GPUs when asked (Ray then runs at most
    GPUs / ``gpus`` jobs at once per node and sets ``CUDA_VISIBLE_DEVICES`` for each)."""
    if gpus < 0:
        raise ValueError(f"gpus per job must be >= 0, got {gpus}")
    return {"num_cpus": 1, **({"num_gpus": gpus} if gpus else {})}


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet_token_auth_notice() -> Iterator[None]:
    """Ray turns token authentication on for a new local cluster and logs a warning saying so on every
    start; the local cluster is ours (loopback only, authenticated), so the notice is held back. Ray's
    other warnings, and the one saying authentication is *off* (RAY_AUTH_MODE=disabled), still show."""
    notice = logging.getLogger(RAY_AUTH_LOGGER)

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")

    notice.addFilter(drop)
    try:
        yield
    finally:
        notice.removeFilter(drop)


def _run_ray(todo: list[Job], store: RecordStore, workers: int, address: str | None, advance: Callable[..., None],
             threads: int | None = None, gpus: float = 0) -> None:
    try:
        import ray
    except ImportError as exc:
        raise MedShieldError("--executor ray needs Ray: pip install 'medshield[ray]'") from exc
    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address, log_to_driver=False)
    elif started:  # a local instance on loopback only; workers see this process's import path
        import sys

        with _quiet_token_auth_notice():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        remote = ray.remote(**ray_options(gpus))(run_job)
        threads = threads or (1 if address else _threads_per_worker(workers))
        pending = {remote.remote(j.fn, j.kwargs, threads): j for j in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                store.put(job.key, ray.get(ref), job.inputs)
                advance(1, info=job.label)
    finally:
        if started:
            ray.shutdown()
