"""Serving a trained run over HTTP: build the FastAPI app (the run wrapped in its inference defense,
keys, limits, detector, shared state) and run it with uvicorn. The ``medshield serve`` command and
uvicorn's worker processes call these.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import uvicorn

from medshield.defenses.detection import StreamDetector
from medshield.defenses.inference import DefenseSpec
from medshield.defenses.limits import QueryLimiter
from medshield.errors import MedShieldError
from medshield.evaluation.calibration import CalibrationConfig
from medshield.evaluation.services import serving_defense
from medshield.models import load_run
from medshield.server.app import UVICORN_OPTIONS, ServeConfig, check_port, create_app, parse_networks
from medshield.server.auth import KeyStore
from medshield.server.state import open_state

log = logging.getLogger(__name__)

SERVE_ENV = "MEDSHIELD_SERVE_OPTIONS"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def make_detector(name: str | None, threshold: float | None = None) -> Any:
    """``stream``: the near-duplicate stream detector of :mod:`medshield.defenses.detection`."""
    key = (name or "none").strip().lower()
    if key == "none":
        return None
    if key != "stream":
        raise MedShieldError(f"unknown detector {name!r} (choices: none, stream)")
    return StreamDetector(**({"threshold": threshold} if threshold is not None else {}))


def build_server_app(run: str | Path, defense: DefenseSpec | None = None, api_keys: str | Path | None = None,
                     budget: int | None = None, rate: float | None = None, burst: float | None = None,
                     allow_scores: bool = False, audit_log: str | Path | None = None, max_batch: int = 256,
                     max_request_bytes: int = 8 << 20, max_side: int = 4096, seed: int = 0, detector: Any = None,
                     detector_threshold: float | None = None, on_flag: str = "block", state: str | Path | None = None,
                     trusted_proxies: list[str] | str | None = None) -> Any:
    """The FastAPI app serving a trained run (see :func:`medshield.server.app.create_app`), wrapped in the
    inference defense ``defense`` (None: undefended). ``state``: an SQLite file, ``redis://host:port`` or
    None (this process's memory), see :func:`medshield.server.state.open_state`."""
    keys = KeyStore.from_sources(api_keys)
    model, config = load_run(Path(run))
    spec = defense or DefenseSpec("none")
    served, defenses = spec.build(model, seed=seed), ([] if spec.is_none else [spec.name])
    if detector is None or isinstance(detector, str):
        detector = make_detector(detector, detector_threshold)
    mc = model.config
    classes = config.get("data", {}).get("classes") or [str(i) for i in range(max(mc.num_classes, 2))]
    cfg = ServeConfig(model_name=mc.name, channels=mc.in_channels, image_size=mc.image_size,
                      class_names=[str(c) for c in classes], defenses=defenses, allow_scores=allow_scores,
                      max_batch=max_batch, max_side=max_side, max_request_bytes=max_request_bytes,
                      audit_log=str(audit_log) if audit_log else None, on_flag=on_flag,
                      trusted_proxies=[str(n) for n in parse_networks(trusted_proxies)])
    try:
        limiter = QueryLimiter(budget=budget, rate=rate, burst=burst if burst is not None else
                               (max(rate, float(max_batch)) if rate is not None else None))
    except ValueError as exc:
        raise MedShieldError(str(exc)) from None
    return create_app(served, keys, cfg, limiter=limiter, detector=detector, state=open_state(state))


def server_app_from_env() -> Any:
    """uvicorn factory for multi-worker serving: each worker builds its app from ``$MEDSHIELD_SERVE_OPTIONS``."""
    options = json.loads(os.environ[SERVE_ENV])
    spec = options.pop("defense", None)
    return build_server_app(**options, defense=None if spec is None else DefenseSpec.of(spec["name"], **spec["params"]))


def _spec_json(spec: DefenseSpec | None) -> dict[str, Any] | None:
    """A spec as JSON for the worker processes (name and explicit parameters, no text to re-parse)."""
    return None if spec is None else {"name": spec.name, "params": spec.explicit}


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          per_worker_limits: bool = False, log_level: str = "info", data_dir: str | Path | None = None,
          calibration: CalibrationConfig | None = CalibrationConfig(), **options: Any) -> None:
    """Run the HTTP service with uvicorn. Budgets, rate limits, blocks and detector history live in
    ``options["state"]`` (an SQLite file or Redis, shared by the workers); with ``state="memory"`` and
    ``workers > 1`` a key could get up to ``workers`` times its budget: refused unless
    ``per_worker_limits`` accepts that. Proxy headers are read by the app, only from
    ``trusted_proxies`` (uvicorn's own proxy-header handling is off). A parameter-less ``rnd``/``dnd``
    defense is first calibrated on the run's validation split (:func:`serving_defense`), once, so every
    worker serves the same setting."""
    check_port(port)
    if workers < 1:
        raise MedShieldError(f"--workers must be >= 1, got {workers}")
    limited = any(options.get(k) not in (None, "none") for k in ("budget", "rate", "detector"))
    in_memory = options.get("state") in (None, "memory")
    if workers > 1 and limited and in_memory and not per_worker_limits:
        raise MedShieldError(f"budgets, rate limits and detector state are kept per worker process: with {workers} workers a key "
                             f"could get {workers}x its budget; use --workers 1 or pass --per-worker-limits")
    if host not in LOOPBACK:
        log.warning("serving on %s: API keys travel in plain HTTP; put a TLS-terminating proxy in front", host)
    options["defense"] = serving_defense(run, options.get("defense"), data_dir, calibration)
    if workers == 1:
        app = build_server_app(run, **options)
        uvicorn.run(app, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)
        return
    build_server_app(run, **options)  # fail fast on bad options before forking workers
    os.environ[SERVE_ENV] = json.dumps({"run": str(run), **{k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in options.items() if k != "defense"},
                                        "defense": _spec_json(options.get("defense"))})
    patience = {"timeout_worker_healthcheck": 60} \
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters else {}  # slow worker start-up
    uvicorn.run("medshield.server.service:server_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, **UVICORN_OPTIONS, **patience)
