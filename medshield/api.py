"""The service functions that both shells (CLI and HTTP server) call."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medshield.data import Dataset, load_dataset
from medshield.errors import MedShieldError
from medshield.evaluation.metrics import classification_metrics
from medshield.models import BoundedModel, create_model, load_run, predict, probabilities
from medshield.models.checkpoint import CONFIG_FILE, MODEL_FILE, read_json, write_json
from medshield.models.factory import ModelConfig
from medshield.models.train import STATE_DIR, BatchHook, TrainConfig, train_model

log = logging.getLogger(__name__)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (model initialisation); restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def data_options(config: dict[str, Any]) -> dict[str, Any]:
    """The dataset options a run was trained with (size, rgb, resize), from its ``config.json``."""
    data = config.get("data", {})
    return {k: data.get(k) for k in ("size", "rgb", "resize", "seed") if data.get(k) is not None}


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite a finished run unless asked; ``resume`` continues an interrupted one."""
    out = Path(out)
    has_model = (out / MODEL_FILE).exists() or (out / "metrics.json").exists()
    has_state = (out / STATE_DIR / "train_state.json").exists()
    if overwrite and out.exists():
        shutil.rmtree(out)
    elif (has_model or has_state) and not resume:
        raise MedShieldError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    elif resume and has_state and (out / CONFIG_FILE).exists():
        return
    out.mkdir(parents=True, exist_ok=True)


def train(
    dataset: str,
    out: str | Path,
    model: str = "smallcnn",
    data_dir: str | Path | None = None,
    size: int | None = None,
    rgb: bool = False,
    resize: int | None = None,
    single_logit: bool = False,
    pretrained: str | None = None,
    freeze_backbone: bool = False,
    train_config: TrainConfig | None = None,
    hook: BatchHook | None = None,
    resume: bool = False,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a model and evaluate it on the test split; writes ``model.safetensors``, ``config.json``
    and ``metrics.json`` (``{"test": {...}, "train_seconds": ...}``) into ``out``."""
    cfg = train_config or TrainConfig()
    out = Path(out)
    ds = load_dataset(dataset, data_dir, size=size, rgb=rgb, resize=resize, seed=cfg.seed)
    prepare_run_dir(out, resume, overwrite)
    mcfg = ModelConfig(name=model, in_channels=ds.channels, num_classes=1 if single_logit else ds.num_classes,
                       image_size=ds.image_size, pretrained=pretrained, freeze_backbone=freeze_backbone)
    if single_logit and ds.num_classes != 2:
        raise MedShieldError("--single-logit needs a binary dataset")
    with seeded(cfg.seed):
        net = create_model(mcfg)
    config = {"data": {"dataset": dataset, "size": size, "rgb": rgb, "resize": resize, "seed": cfg.seed,
                       **ds.summary()}, "train": cfg.__dict__, **(extra_config or {})}
    write_json(out / CONFIG_FILE, {"model": net.config.to_dict(), **config})
    state = train_model(net, ds, out, cfg, hook=hook, resume=resume)
    metrics = {
        "test": evaluate_model(net, ds, "test", seed=cfg.seed),
        "val": evaluate_model(net, ds, "val", seed=cfg.seed, n_bootstrap=0),
        "train_seconds": state.train_seconds,
        "best_epoch": state.best_epoch,
        "epochs_run": state.next_epoch,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "model": model,
        "dataset": dataset,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_model(model: BoundedModel, ds: Dataset, split: str = "test", seed: int = 0,
                   n_bootstrap: int = 1000) -> dict[str, Any]:
    """Clean metrics of ``model`` on a split (with bootstrap CIs)."""
    part = ds.split(split)
    probs = probabilities(predict(model, part.images()))
    return classification_metrics(part.labels, probs, ds.positive_class, n_bootstrap=n_bootstrap, seed=seed)


def load_run_and_data(run: str | Path, dataset: str | None, data_dir: str | Path | None) -> tuple[BoundedModel, Dataset, dict[str, Any]]:
    """A trained run plus its dataset loaded with the options it was trained with; checks they fit."""
    model, config = load_run(Path(run))
    name = dataset or config.get("data", {}).get("dataset")
    if not name:
        raise MedShieldError("no dataset given and the run's config.json names none; pass --dataset")
    ds = load_dataset(name, data_dir, **data_options(config))
    mc = model.config
    if ds.channels != mc.in_channels or ds.image_size != mc.image_size:
        raise MedShieldError(
            f"{name} gives {ds.channels}x{ds.image_size}x{ds.image_size} images but the model expects "
            f"{mc.in_channels}x{mc.image_size}x{mc.image_size}; pass matching --size/--rgb"
        )
    if max(mc.num_classes, 2) != ds.num_classes:
        raise MedShieldError(f"{name} has {ds.num_classes} classes but the model predicts {max(mc.num_classes, 2)}")
    return model, ds, config


def evaluate(run: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
             split: str = "test") -> dict[str, Any]:
    """Evaluate a trained run; writes ``RUN/eval-<split>.json``."""
    model, ds, _ = load_run_and_data(run, dataset, data_dir)
    start = time.perf_counter()
    metrics = evaluate_model(model, ds, split)
    metrics["seconds"] = time.perf_counter() - start
    metrics["dataset"], metrics["split"] = ds.name, split
    write_json(Path(run) / f"eval-{split}.json", metrics)
    return metrics


def demo(out: str | Path = "runs/demo", epochs: int = 5, seed: int = 0, overwrite: bool = True) -> dict[str, Any]:
    """Train ``smallcnn`` on the built-in synthetic phantoms and evaluate it."""
    run = Path(out) / "model"
    return train("demo", run, model="smallcnn", train_config=TrainConfig(epochs=epochs, seed=seed),
                 overwrite=overwrite)


def run_info(run: str | Path) -> dict[str, Any]:
    return read_json(Path(run) / CONFIG_FILE)


# --- HTTP service (issue 7) -------------------------------------------------------------------

SERVE_ENV = "MEDSHIELD_SERVE_OPTIONS"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def resolve_defense(model: torch.nn.Module, name: str | None, seed: int = 0,
                    params: dict[str, float] | None = None) -> tuple[torch.nn.Module, list[str]]:
    """Wrap ``model`` in the inference-time defense ``name`` (``none``: unchanged) from the defense
    registry (:data:`medshield.defenses.inference.INFERENCE_DEFENSES`); returns the model to serve
    and the names to report."""
    from medshield.defenses.inference import defend

    key = (name or "none").strip().lower()
    if key == "none":
        if params:
            raise MedShieldError("--defense-param given without a --defense")
        return model, []
    return defend(model, key, seed=seed, **(params or {})), [key]


def parse_params(items: list[str] | None) -> dict[str, float]:
    """``["nu=0.02", "m=0.5"]`` -> ``{"nu": 0.02, "m": 0.5}`` with one-line errors."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise MedShieldError(f"expected NAME=NUMBER, got {item!r}")
    return out


def make_detector(name: str | None, threshold: float | None = None) -> Any:
    """``stream``: the near-duplicate stream detector of :mod:`medshield.defenses.detection`."""
    key = (name or "none").strip().lower()
    if key == "none":
        return None
    if key != "stream":
        raise MedShieldError(f"unknown detector {name!r} (choices: none, stream)")
    from medshield.defenses.detection import StreamDetector

    return StreamDetector(**({"threshold": threshold} if threshold is not None else {}))


def build_server_app(run: str | Path, defense: str | None = "none", api_keys: str | Path | None = None,
                     budget: int | None = None, rate: float | None = None, burst: float | None = None,
                     allow_scores: bool = False, audit_log: str | Path | None = None, max_batch: int = 256,
                     max_request_bytes: int = 8 << 20, max_side: int = 4096, seed: int = 0,
                     defense_params: dict[str, float] | None = None, detector: Any = None,
                     detector_threshold: float | None = None, on_flag: str = "block") -> Any:
    """The FastAPI app serving a trained run (see :func:`medshield.server.app.create_app`)."""
    from medshield.defenses.limits import QueryLimiter
    from medshield.server.app import ServeConfig, create_app
    from medshield.server.auth import KeyStore

    keys = KeyStore.from_sources(api_keys)
    model, config = load_run(Path(run))
    served, defenses = resolve_defense(model, defense, seed=seed, params=defense_params)
    if detector is None or isinstance(detector, str):
        detector = make_detector(detector, detector_threshold)
    mc = model.config
    classes = config.get("data", {}).get("classes") or [str(i) for i in range(max(mc.num_classes, 2))]
    cfg = ServeConfig(model_name=mc.name, channels=mc.in_channels, image_size=mc.image_size,
                      class_names=[str(c) for c in classes], defenses=defenses, allow_scores=allow_scores,
                      max_batch=max_batch, max_side=max_side, max_request_bytes=max_request_bytes,
                      audit_log=str(audit_log) if audit_log else None, on_flag=on_flag)
    limiter = QueryLimiter(budget=budget, rate=rate, burst=burst if burst is not None else
                           (max(rate, float(max_batch)) if rate is not None else None))
    return create_app(served, keys, cfg, limiter=limiter, detector=detector)


def server_app_from_env() -> Any:
    """uvicorn factory for multi-worker serving: each worker builds its app from ``$MEDSHIELD_SERVE_OPTIONS``."""
    import json
    import os

    return build_server_app(**json.loads(os.environ[SERVE_ENV]))


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          per_worker_limits: bool = False, log_level: str = "info", **options: Any) -> None:
    """Run the HTTP service with uvicorn. Budgets and rate limits live in each worker process, so with
    ``workers > 1`` a key could get up to ``workers`` times its budget: refused unless
    ``per_worker_limits`` accepts that."""
    import json
    import os

    import uvicorn

    if workers < 1:
        raise MedShieldError(f"--workers must be >= 1, got {workers}")
    limited = any(options.get(k) not in (None, "none") for k in ("budget", "rate", "detector"))
    if workers > 1 and limited and not per_worker_limits:
        raise MedShieldError(f"budgets, rate limits and detector state are kept per worker process: with {workers} workers a key "
                             f"could get {workers}x its budget; use --workers 1 or pass --per-worker-limits")
    if host not in LOOPBACK:
        log.warning("serving on %s: API keys travel in plain HTTP; put a TLS-terminating proxy in front", host)
    if workers == 1:
        app = build_server_app(run, **options)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    build_server_app(run, **options)  # fail fast on bad options before forking workers
    os.environ[SERVE_ENV] = json.dumps({"run": str(run), **{k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in options.items()}})
    uvicorn.run("medshield.api:server_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
