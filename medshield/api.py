"""The service functions that both shells (CLI and HTTP server) call."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from medshield.data import Dataset, load_dataset
from medshield.defenses.inference import DefenseSpec
from medshield.errors import MedShieldError
from medshield.evaluation.defense import EVAL_ATTACKS
from medshield.evaluation.identity import data_identity, model_fingerprint
from medshield.evaluation.metrics import classification_metrics
from medshield.evaluation.multilabel import (
    FindingAttackConfig, clean_finding_metrics, finding_blackbox_records, finding_whitebox_records,
)
from medshield.evaluation.whitebox import WHITEBOX_ATTACKS
from medshield.models import BoundedModel, create_model, load_run, predict, probabilities
from medshield.models.checkpoint import CONFIG_FILE, MODEL_FILE, read_json, write_json
from medshield.models.factory import ModelConfig
from medshield.models.train import STATE_DIR, BatchHook, TrainConfig, train_model
from medshield.targets import GRADIENTS_UNAVAILABLE, Target, open_target
from medshield.targets.data import data_options, load_target_data, run_config
from medshield.targets.medshield_api import RemoteClassifier
from medshield.targets.remote import remote_counts
from medshield.types import EPS, EPS_GRID, Norm, eps_label

log = logging.getLogger(__name__)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (model initialisation); restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
    init_from: str | Path | None = None,
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
    if init_from:
        _init_weights(net, Path(init_from))
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


def _init_weights(net: BoundedModel, run: Path) -> None:
    """Start from a trained run's weights (fine-tuning); the architectures must match."""
    source, _ = load_run(run)
    try:
        net.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise MedShieldError(f"--init-from {run}: its model does not match ({str(exc)[:120]})") from exc


def evaluate_model(model: BoundedModel, ds: Dataset, split: str = "test", seed: int = 0,
                   n_bootstrap: int = 1000) -> dict[str, Any]:
    """Clean metrics of ``model`` on a split (with bootstrap CIs)."""
    part = ds.split(split)
    probs = probabilities(predict(model, part.images()))
    return classification_metrics(part.labels, probs, ds.positive_class, n_bootstrap=n_bootstrap, seed=seed)


def load_target_and_data(ref: str | Path | Target, dataset: str | None = None, data_dir: str | Path | None = None,
                         device: str | None = "cpu", manifest: str | Path | None = None) -> tuple[Target, Dataset]:
    """A target (a card file, a MedShield run folder or a Target) on ``device`` plus the data to test it on
    (a run's own dataset options, or ``dataset``/``manifest`` at the card's size); checks they fit."""
    target = open_target(ref, device)
    return target, load_target_data(target, dataset, data_dir, manifest)


def load_run_and_data(run: str | Path, dataset: str | None, data_dir: str | Path | None,
                      device: str = "cpu") -> tuple[BoundedModel, Dataset, dict[str, Any]]:
    """A trained run or target card (on ``device``) plus its dataset; returns the prediction model, the
    data and the run's config (a card's description for other targets)."""
    target, ds = load_target_and_data(run, dataset, data_dir, device)
    return target.model, ds, run_config(target) or {"target": target.describe()}


def target_check(card: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                 manifest: str | Path | None = None, split: str = "test", n: int | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Load a target card (or run), run the data through it and report what was found (one JSON object:
    shapes, output ranges, ``test.accuracy`` and metrics, gradients, determinism)."""
    from medshield.evaluation.target_check import check_target

    target, ds = load_target_and_data(card, dataset, data_dir, device, manifest)
    return check_target(target, ds, split=split, n=n)


def model_label(target: Target) -> str:
    """The architecture name of a MedShield run, else the card's format (``torchscript``, ``onnx``, ...)."""
    config = getattr(target.model, "config", None)
    return str(getattr(config, "name", None) or target.format)


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


def demo(out: str | Path = "runs/demo", epochs: int = 5, seed: int = 0, workers: int | None = None,
         train_only: bool = False) -> dict[str, Any]:
    """Train on the built-in synthetic phantoms and audit (see :func:`medshield.campaign.audit.demo`)."""
    from medshield.campaign.audit import demo as run_demo

    return run_demo(out, epochs=epochs, seed=seed, workers=workers, train_only=train_only)


def audit(runs: list[str], out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
          config: Any = None, **overrides: Any) -> dict[str, Any]:
    """The one-command security audit (see :func:`medshield.campaign.audit.audit`)."""
    from medshield.campaign.audit import audit as run_audit

    return run_audit(runs, out, dataset=dataset, data_dir=data_dir, config=config, **overrides)


def reproduce_thesis(data_dir: str | Path, out: str | Path, preset: str = "quick", workers: int | None = None,
                     executor: str | None = None, address: str | None = None, config: str | Path | None = None) -> dict[str, Any]:
    """The thesis's experiment grid beside its published numbers (see :mod:`medshield.campaign.thesis`)."""
    from medshield.campaign.thesis import reproduce_thesis as run_thesis

    return run_thesis(data_dir, out, preset=preset, workers=workers, executor=executor, address=address, config=config)


def run_info(run: str | Path) -> dict[str, Any]:
    return read_json(Path(run) / CONFIG_FILE)


# ---- white-box attacks and transferability (issue 3) ----

def _eval_images(ds: Dataset, split: str, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images: the whole split, or ``n`` of them drawn with ``seed`` (same for every run)."""
    part = ds.split(split)
    if n is None or n >= len(part):
        return part.images(), part.labels
    if n < 1:
        raise MedShieldError(f"--n must be >= 1, got {n}")
    idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return part.get(idx)


def attack(
    runs: Sequence[str | Path],
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    attacks: Sequence[str] = WHITEBOX_ATTACKS,
    eps: Sequence[float] = EPS_GRID,
    norm: Norm = Norm.LINF,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    direction: str = "both",
    attack_kwargs: dict[str, dict[str, Any]] | None = None,
    grid: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """White-box evaluation of one or more runs (several runs, e.g. grey and RGB, are reported side by
    side); resumable: a stored job is reused only when its model, images, attack, parameters, eps and
    seed are the same (else refused naming the difference, or recomputed with ``overwrite``). Writes
    ``OUT/whitebox.json``, ``whitebox.md``, ``robust_vs_eps.png``, ``grid.png``."""
    from medshield.attacks import ATTACKS
    from medshield.evaluation.store import RecordStore
    from medshield.evaluation.whitebox import WhiteboxJob, run_whitebox
    from medshield.report.whitebox import write_whitebox_report

    for name in attacks:
        ATTACKS.get(name)
    job = WhiteboxJob(attacks=list(attacks), eps=list(eps), norm=norm, batch_size=batch_size, seed=seed,
                      direction=direction, attack_kwargs=attack_kwargs or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "whitebox_jobs.json", overwrite=overwrite)
    records, loaded = [], {}
    refs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    for ref in refs:
        target, ds = load_target_and_data(ref, dataset, data_dir, device)
        if target.white_box is None:
            if len(refs) == 1:
                raise MedShieldError(f"{target.name}: {GRADIENTS_UNAVAILABLE} (medshield blackbox / transfer)")
            log.warning("%s: %s", target.name, GRADIENTS_UNAVAILABLE)
            continue
        model = target.white_box
        x, y = _eval_images(ds, split, n, seed)
        meta = {"run": target.name, "model": model_label(target), "dataset": ds.name, "split": split,
                "channels": ds.channels, "target_digest": target.digest}
        identity = {"model": model_fingerprint(target), "data": data_identity(ds.name, split, x, y)}
        records += run_whitebox(model, x, y, job, positive_class=ds.positive_class, store=store, meta=meta,
                                identity=identity)
        loaded[target.name] = (model, ds, x, y)
    write_json(out / "whitebox.json", records)
    write_whitebox_report(records, out, loaded if grid else {}, job)
    return records


def transfer(
    sources: Sequence[str | Path],
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    attack_name: str = "mifgsm",
    eps: float = EPS,
    norm: Norm = Norm.LINF,
    split: str = "test",
    n: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Source x target transfer matrix (stored rows reused only from the same models, images, attack,
    eps and seed; else refused or, with ``overwrite``, recomputed); writes ``OUT/transfer.json``,
    ``transfer.md`` and ``transfer.png``."""
    from medshield.attacks import create_attack
    from medshield.evaluation.store import RecordStore
    from medshield.evaluation.transfer import accuracy_matrix, transfer_records
    from medshield.report import heatmap, pivot_table

    runs = list(sources)
    if len(runs) < 2:
        raise MedShieldError("transfer needs at least two --source runs")
    models, sources, prints, ds = {}, {}, {}, None
    for run in runs:
        target, ds = load_target_and_data(run, dataset, data_dir, device)
        models[target.name] = target.model
        prints[target.name] = model_fingerprint(target)
        if target.white_box is not None:
            sources[target.name] = target.white_box
        else:
            log.warning("%s: %s; it is a transfer target only", target.name, GRADIENTS_UNAVAILABLE)
    assert ds is not None
    if not sources:
        raise MedShieldError(f"transfer needs at least one source with gradients: {GRADIENTS_UNAVAILABLE.split(':')[0]} for all")
    x, y = _eval_images(ds, split, n, seed)
    atk = create_attack(attack_name, norm=norm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"attack": attack_name, "norm": str(norm), "dataset": ds.name, "split": split, "eps_label": eps_label(eps)}
    records = transfer_records(models, x, y, atk, eps, positive_class=ds.positive_class,
                               batch_size=batch_size, seed=seed,
                               store=RecordStore(out / "transfer_jobs.json", overwrite),
                               meta=meta, sources=sources,
                               identity={"models": prints, "data": data_identity(ds.name, split, x, y)})
    names, matrix = accuracy_matrix(records)
    write_json(out / "transfer.json", {"records": records, "names": names, "robust_accuracy": matrix,
                                        "clean_accuracy": {r["target"]: r["clean_accuracy"] for r in records}})
    title = f"{attack_name} eps={eps_label(eps)}: target accuracy on source's adversarials"
    table = pivot_table(records, ["source"], "target", "robust_accuracy", fmt=lambda v: f"{100 * v:.2f}%",
                        row_headers=["source \\ target"])
    clean = pivot_table([{"source": "(clean)", "target": r["target"], "clean_accuracy": r["clean_accuracy"]}
                         for r in records], ["source"], "target", "clean_accuracy", fmt=lambda v: f"{100 * v:.2f}%",
                        row_headers=["source \\ target"])
    (out / "transfer.md").write_text(f"## {title}\n\n{table}\n{clean}")
    heatmap(matrix, names, names, out / "transfer.png", title=title, xlabel="target", ylabel="source")
    return records


# ---- white-box defenses: AT, ANT, noise training (issue 4) ----

def defend(
    dataset: str,
    out: str | Path,
    defense: str,
    model: str = "smallcnn",
    data_dir: str | Path | None = None,
    train_attack: str = "mifgsm",
    train_eps: float = EPS,
    train_steps: int | None = None,
    norm: Norm = Norm.LINF,
    source: str = "online",
    source_run: str | Path | None = None,
    init_from: str | Path | None = None,
    noise_mean: float = 0.0,
    noise_sigma: float = 0.05,
    train_config: TrainConfig | None = None,
    eval_attacks: Sequence[str] = EVAL_ATTACKS,
    eval_eps: Sequence[float] = (EPS,),
    eval_n: int | None = None,
    pgd_restarts: int = 3,
    resume: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train a defended model (``at``, ``ant``, ``noise`` or ``none``) and evaluate it white-box against
    every attack (PGD with restarts included); writes the run plus ``OUT/defense.json``."""
    from medshield.defenses.training import build_training_hook
    from medshield.evaluation.defense import defense_records

    eps = train_eps
    hook_spec = {"defense": defense, "train_attack": train_attack if defense in ("at", "ant") else None,
                 "train_eps": eps, "train_steps": train_steps, "norm": str(norm), "source": source,
                 "source_run": str(source_run) if source_run else None, "init_from": str(init_from) if init_from else None,
                 "noise_mean": noise_mean, "noise_sigma": noise_sigma}
    train_config = train_config or TrainConfig()
    fixed = load_run(Path(source_run), train_config.device)[0] if source == "fixed" and source_run else None
    hook = build_training_hook(defense, train_attack, eps, norm=norm, steps=train_steps, source=source,
                               fixed_model=fixed, mean=noise_mean, sigma=noise_sigma)
    out = Path(out)
    init_config = Path(init_from) / CONFIG_FILE if init_from else None
    data = {k: v for k, v in data_options(read_json(init_config)).items() if k != "seed"} \
        if init_config and init_config.is_file() else {}  # fine-tune on the images the init run saw (size, RGB)
    metrics = train(dataset, out, model=model, data_dir=data_dir, train_config=train_config, hook=hook,
                    resume=resume, overwrite=overwrite, init_from=init_from, extra_config={"defense": hook_spec},
                    **data)
    whitebox = attack([out], out / "eval", dataset=dataset, data_dir=data_dir, attacks=eval_attacks,
                      eps=eval_eps, norm=norm, n=eval_n, seed=train_config.seed,
                      attack_kwargs={"pgd": {"restarts": pgd_restarts, "steps": 20}}, grid=False,
                      device=train_config.device)
    records = defense_records(whitebox, hook_spec, metrics)
    write_json(out / "defense.json", records)
    return records


def defense_report(runs: Sequence[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """Combine defended runs' ``defense.json`` into ``OUT/defense.json``, ``defense.md``, the bar chart
    (thesis Fig. 4-5) and training curves (Fig. 4-6)."""
    from medshield.evaluation.defense import unique_labels
    from medshield.report.defense import write_defense_report

    dirs = [Path(run) for run in runs]
    for run in dirs:
        if not (run / "defense.json").is_file():
            raise MedShieldError(f"{run / 'defense.json'} not found: train it with `medshield defend ... --out {run}`")
    per_run = [(run.name, read_json(run / "defense.json")) for run in dirs]
    records, histories = [], {}
    for run, (_, run_records), label in zip(dirs, per_run, unique_labels(per_run)):
        records += [{**rec, "label": label} for rec in run_records]
        histories[label] = read_json(run / "metrics.json").get("history", [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "defense.json", records)
    write_defense_report(records, histories, out)
    return records

# --- HTTP service (issue 7) -------------------------------------------------------------------

SERVE_ENV = "MEDSHIELD_SERVE_OPTIONS"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def make_detector(name: str | None, threshold: float | None = None) -> Any:
    """``stream``: the near-duplicate stream detector of :mod:`medshield.defenses.detection`."""
    key = (name or "none").strip().lower()
    if key == "none":
        return None
    if key != "stream":
        raise MedShieldError(f"unknown detector {name!r} (choices: none, stream)")
    from medshield.defenses.detection import StreamDetector

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
    from medshield.defenses.limits import QueryLimiter
    from medshield.server.app import ServeConfig, create_app, parse_networks
    from medshield.server.auth import KeyStore
    from medshield.server.state import open_state

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
    import json
    import os

    options = json.loads(os.environ[SERVE_ENV])
    spec = options.pop("defense", None)
    return build_server_app(**options, defense=None if spec is None else DefenseSpec.of(spec["name"], **spec["params"]))


def _spec_json(spec: DefenseSpec | None) -> dict[str, Any] | None:
    """A spec as JSON for the worker processes (name and explicit parameters, no text to re-parse)."""
    return None if spec is None else {"name": spec.name, "params": spec.explicit}


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          per_worker_limits: bool = False, log_level: str = "info", **options: Any) -> None:
    """Run the HTTP service with uvicorn. Budgets, rate limits, blocks and detector history live in
    ``options["state"]`` (an SQLite file or Redis, shared by the workers); with ``state="memory"`` and
    ``workers > 1`` a key could get up to ``workers`` times its budget: refused unless
    ``per_worker_limits`` accepts that. Proxy headers are read by the app, only from
    ``trusted_proxies`` (uvicorn's own proxy-header handling is off)."""
    import json
    import os

    import uvicorn

    from medshield.server.app import UVICORN_OPTIONS, check_port

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
    if workers == 1:
        app = build_server_app(run, **options)
        uvicorn.run(app, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)
        return
    build_server_app(run, **options)  # fail fast on bad options before forking workers
    os.environ[SERVE_ENV] = json.dumps({"run": str(run), **{k: (str(v) if isinstance(v, Path) else v)
                                                           for k, v in options.items() if k != "defense"},
                                        "defense": _spec_json(options.get("defense"))})
    import inspect

    patience = {"timeout_worker_healthcheck": 60} \
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters else {}  # slow worker start-up
    uvicorn.run("medshield.api:server_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, **UVICORN_OPTIONS, **patience)

def blackbox(run: str | Path | None, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
             attacks: Sequence[str] | None = None, budgets: Sequence[int] | None = None, n_images: int = 50,
             defenses: Sequence[DefenseSpec] | None = None, seed: int = 0, norm: Norm = Norm.L2, split: str = "test",
             shard_size: int = 10, target: str | None = None, api_key: str | None = None,
             batch_size: int | None = None, adaptive_k: int = 1, device: str = "cpu",
             surrogate: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Decision-based black-box evaluation (thesis chapter 5) of a local run, or of a live service with
    ``target`` (its URL) and ``api_key``; writes ``OUT/blackbox.json``, ``OUT/l2_vs_queries.png``,
    ``OUT/strips.png`` and ``OUT/blackbox.md``; resumable (``OUT/jobs.json``). ``defenses`` are
    :class:`DefenseSpec` values; ``adaptive_k`` > 1 makes the attacker take a majority over k repeats;
    ``surrogate`` is the attacker's own run (the ``surrogate`` attack's substitute model). Stored jobs
    are reused only from the same model (or service), data, defense, attack, budgets and seed; others
    are refused naming the difference, or recomputed with ``overwrite``."""
    from medshield.evaluation.blackbox import BlackboxConfig, run_blackbox
    from medshield.report.blackbox_plots import markdown_table, plot_l2_vs_queries, plot_strips

    cfg = BlackboxConfig(n_images=n_images, seed=seed, norm=str(norm), shard_size=shard_size, adaptive_k=adaptive_k,
                         surrogate_run=str(surrogate) if surrogate else None)
    substitute = load_run(Path(surrogate), device)[0] if surrogate else None
    cfg.attacks = attacks or list(cfg.attacks)
    cfg.budgets = sorted(budgets or list(cfg.budgets))
    cfg.defenses = defenses or list(cfg.defenses)
    cfg.batch_size = batch_size or (64 if target else cfg.batch_size)
    if n_images < 1 or any(b < 1 for b in cfg.budgets):
        raise MedShieldError("--n-images and every --budgets value must be positive")
    out = Path(out)
    if target:
        summary, ds = _remote_blackbox(target, api_key, dataset, data_dir, split, out, cfg, substitute, overwrite)
    else:
        if run is None:
            raise MedShieldError("give --run RUN (a local model) or --target URL (a live service)")
        system, ds = load_target_and_data(run, dataset, data_dir, device)
        before = remote_counts(system.model)
        part = ds.split(split)
        identity = {"model": model_fingerprint(system),
                    "data": data_identity(ds.name, split, part.images(), part.labels)}
        summary = run_blackbox(system.model, part, out, cfg, positive_class=ds.positive_class, surrogate=substitute,
                               identity=identity, overwrite=overwrite)
        summary["target_identity"] = system.identity()
        if before is not None:  # a remote target: what went over the network during this run
            summary["remote"] = {k: v - before[k] for k, v in (remote_counts(system.model) or before).items()}
    summary.update(run=str(run) if run else None, dataset=ds.name, split=split)
    write_json(out / "blackbox.json", summary)
    plot_l2_vs_queries(summary, out / "l2_vs_queries.png")
    plot_strips(summary, out / "strips.png")
    (out / "blackbox.md").write_text(markdown_table(summary))
    return summary


def _remote_blackbox(target: str, api_key: str | None, dataset: str | None, data_dir: str | Path | None,
                     split: str, out: Path, cfg: Any, surrogate: Any = None,
                     overwrite: bool = False) -> tuple[dict[str, Any], Dataset]:
    """Attack a live MedShield service: queries are packed into batch requests of ``cfg.batch_size``."""
    import os

    from medshield.evaluation.blackbox import run_blackbox

    key = api_key or os.environ.get("MEDSHIELD_API_KEY")
    if not key:
        raise MedShieldError("--target needs an API key: --api-key KEY or $MEDSHIELD_API_KEY")
    if not dataset:
        raise MedShieldError("--target needs --dataset (the images to attack)")
    with RemoteClassifier(target, key, batch_size=cfg.batch_size) as remote:
        info = remote.info()
        channels, size = info["input_shape"][0], info["input_shape"][-1]
        ds = load_dataset(dataset, data_dir, size=size, rgb=channels == 3)
        part = ds.split(split)
        identity = {"model": {"url": target, "model": info},
                    "data": data_identity(ds.name, split, part.images(), part.labels)}
        summary = run_blackbox(None, part, out, cfg, label_fn=remote.labels, target=target,
                               surrogate=surrogate, identity=identity, overwrite=overwrite)
        summary["remote"] = {"model": info, "queries_sent": remote.queries, "requests": remote.requests}
    return summary, ds


# ---- black-box defenses: stream detection and clean-input trade-off (issue 6) ----

def detect(run: str | Path, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
           **options: Any) -> dict[str, Any]:
    """Stream-detector evaluation (attack streams flagged, benign false positives; see
    :mod:`medshield.evaluation.detection`); ``options`` are :class:`DetectionConfig` fields.
    Writes ``OUT/detection.json`` and ``OUT/detection.md``."""
    from medshield.evaluation.detection import DetectionConfig, detection_markdown, run_detection

    model, ds, _ = load_run_and_data(run, dataset, data_dir)
    summary = run_detection(model, ds, DetectionConfig(**{k: v for k, v in options.items() if v is not None}))
    summary.update(run=str(run), dataset=ds.name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "detection.json", summary)
    (out / "detection.md").write_text(detection_markdown(summary))
    return summary


def defense_tradeoff(run: str | Path, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                     **options: Any) -> dict[str, Any]:
    """Clean accuracy and flip rate vs noise level for RND and DND with the chosen operating points
    (:func:`medshield.evaluation.defended.tradeoff_sweeps`); writes ``OUT/tradeoff.json``, ``.md``, ``.png``."""
    from medshield.evaluation.defended import tradeoff_sweeps
    from medshield.report.tradeoff_plot import plot_tradeoff, tradeoff_markdown

    model, ds, _ = load_run_and_data(run, dataset, data_dir)
    summary = tradeoff_sweeps(model, ds, **{k: v for k, v in options.items() if v is not None})
    summary.update(run=str(run), dataset=ds.name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tradeoff.json", summary)
    (out / "tradeoff.md").write_text(tradeoff_markdown(summary))
    plot_tradeoff(summary, out / "tradeoff.png")
    return summary


# ---- multi-label targets: per-finding metrics and attacks (issue 14) ----

def findings(ref: str | Path | Target, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
             manifest: str | Path | None = None, split: str = "test", n_images: int | None = 50,
             eps: Sequence[float] = (2 / 255, 4 / 255, 8 / 255), budgets: Sequence[int] | None = None,
             modes: tuple[str, ...] = ("hide", "add"), steps: int = 20, label_only: bool = True,
             seed: int = 0, device: str | None = "cpu") -> dict[str, Any]:
    """Per-finding evaluation of a multi-label target: clean metrics per finding at the card's thresholds
    (with bootstrap CIs) on the whole split, then hide/add-one-finding attacks on ``n_images`` of it
    (white-box where gradients exist; label-only at ``budgets``); writes ``OUT/findings.json``."""
    target, ds = load_target_and_data(ref, dataset, data_dir, device, manifest)
    if target.task != "multilabel":
        raise MedShieldError(f"{target.name} is a {target.task} classifier; findings needs output.task: multilabel")
    names, thresholds = target.class_names, target.card.output.threshold_list()
    part = ds.split(split)
    clean = clean_finding_metrics(target.model, part.images(), part.labels, names, thresholds, seed=seed)
    x, _ = _eval_images(ds, split, n_images, seed)
    cfg = FindingAttackConfig(eps=list(eps), modes=modes, steps=steps, budgets=list(budgets or [500, 1000]), seed=seed)
    summary: dict[str, Any] = {"target": target.identity(), "dataset": ds.name, "split": split, "findings": names,
                               "thresholds": thresholds, "clean": clean, "whitebox": [], "blackbox": []}
    if target.white_box is not None:
        summary["whitebox"] = finding_whitebox_records(target.white_box, x, names, thresholds, cfg)
    else:
        summary["whitebox_skipped"] = GRADIENTS_UNAVAILABLE
    if label_only:
        summary["blackbox"] = finding_blackbox_records(target.model, x, names, thresholds, cfg, pool=part.images())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "findings.json", summary)
    return summary
