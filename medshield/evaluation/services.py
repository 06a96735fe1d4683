"""Shared services of the upper layers: load a target and its data, train and evaluate a model, choose
the evaluation images, run a white-box evaluation and a training-time defense. The API (and so the CLI
and the HTTP server) and the campaign jobs both call these; they write records, never reports.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from medshield.attacks import ATTACKS
from medshield.data import Dataset, load_dataset
from medshield.defenses.training import build_training_hook
from medshield.errors import MedShieldError
from medshield.evaluation.defense import EVAL_ATTACKS, defense_records
from medshield.evaluation.identity import data_identity, model_fingerprint
from medshield.evaluation.store import RecordStore
from medshield.evaluation.whitebox import (GRID_EXAMPLES, WHITEBOX_ATTACKS, WhiteboxJob, grid_choice, grid_examples,
                                           run_whitebox, save_grid_examples)
from medshield.models import BoundedModel, create_model, load_run, predict, probabilities
from medshield.models.checkpoint import CONFIG_FILE, MODEL_FILE, read_json, write_json
from medshield.models.factory import ModelConfig
from medshield.models.metrics import classification_metrics
from medshield.models.train import STATE_DIR, BatchHook, TrainConfig, train_model
from medshield.targets import GRADIENTS_UNAVAILABLE, Target, open_target
from medshield.targets.data import data_options, load_target_data, run_config
from medshield.types import EPS, EPS_GRID, Norm

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
        init_weights(net, Path(init_from))
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


def init_weights(net: BoundedModel, run: Path) -> None:
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


def model_label(target: Target) -> str:
    """The architecture name of a MedShield run, else the card's format (``torchscript``, ``onnx``, ...)."""
    config = getattr(target.model, "config", None)
    return str(getattr(config, "name", None) or target.format)


def evaluate_run(run: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                 split: str = "test") -> dict[str, Any]:
    """Evaluate a trained run; writes ``RUN/eval-<split>.json``."""
    model, ds, _ = load_run_and_data(run, dataset, data_dir)
    start = time.perf_counter()
    metrics = evaluate_model(model, ds, split)
    metrics["seconds"] = time.perf_counter() - start
    metrics["dataset"], metrics["split"] = ds.name, split
    write_json(Path(run) / f"eval-{split}.json", metrics)
    return metrics


def run_info(run: str | Path) -> dict[str, Any]:
    """A run's ``config.json``."""
    return read_json(Path(run) / CONFIG_FILE)


def eval_images(ds: Dataset, split: str, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images: the whole split, or ``n`` of them drawn with ``seed`` (same for every run)."""
    part = ds.split(split)
    if n is None or n >= len(part):
        return part.images(), part.labels
    if n < 1:
        raise MedShieldError(f"--n-images must be >= 1, got {n}")
    idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return part.get(idx)


def whitebox_evaluation(
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
    """Every attack x eps on one or more runs or cards, resumable through ``OUT/whitebox_jobs.json``: a
    stored job is reused only when its model, images, attack, parameters, eps and seed are the same
    (else refused naming the difference, or recomputed with ``overwrite``). Writes ``OUT/whitebox.json``
    and, with ``grid``, the first model's example images for the report's grid
    (``OUT/grid_examples.npz``); returns the records."""
    for name in attacks:
        ATTACKS.get(name)
    job = WhiteboxJob(attacks=list(attacks), eps=list(eps), norm=norm, batch_size=batch_size, seed=seed,
                      direction=direction, attack_kwargs=attack_kwargs or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "whitebox_jobs.json", overwrite=overwrite)
    records: list[dict[str, Any]] = []
    examples: dict[str, Any] = {}
    refs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    for ref in refs:
        target, ds = load_target_and_data(ref, dataset, data_dir, device)
        if target.white_box is None:
            if len(refs) == 1:
                raise MedShieldError(f"{target.name}: {GRADIENTS_UNAVAILABLE} (medshield blackbox / transfer)")
            log.warning("%s: %s", target.name, GRADIENTS_UNAVAILABLE)
            continue
        model = target.white_box
        x, y = eval_images(ds, split, n, seed)
        meta = {"run": target.name, "model": model_label(target), "dataset": ds.name, "split": split,
                "channels": ds.channels, "target_digest": target.digest}
        identity = {"model": model_fingerprint(target), "data": data_identity(ds.name, split, x, y)}
        records += run_whitebox(model, x, y, job, positive_class=ds.positive_class, store=store, meta=meta,
                                identity=identity)
        if grid and not examples:
            name, grid_eps = grid_choice(job.attacks, job.eps)
            examples[target.name] = grid_examples(model, x, y, name, grid_eps, norm, seed, class_names=ds.class_names)
    write_json(out / "whitebox.json", records)
    if grid:
        save_grid_examples(out / GRID_EXAMPLES, examples)
    return records


def train_defended(
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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train a defended model (``at``, ``ant``, ``noise`` or ``none``) and evaluate it white-box against
    every attack (PGD with restarts included) into ``OUT/eval``; writes the run plus ``OUT/defense.json``.
    Returns the defense records and the white-box records (for a report)."""
    hook_spec = {"defense": defense, "train_attack": train_attack if defense in ("at", "ant") else None,
                 "train_eps": train_eps, "train_steps": train_steps, "norm": str(norm), "source": source,
                 "source_run": str(source_run) if source_run else None, "init_from": str(init_from) if init_from else None,
                 "noise_mean": noise_mean, "noise_sigma": noise_sigma}
    train_config = train_config or TrainConfig()
    fixed = load_run(Path(source_run), train_config.device)[0] if source == "fixed" and source_run else None
    hook = build_training_hook(defense, train_attack, train_eps, norm=norm, steps=train_steps, source=source,
                               fixed_model=fixed, mean=noise_mean, sigma=noise_sigma)
    out = Path(out)
    init_config = Path(init_from) / CONFIG_FILE if init_from else None
    data = {k: v for k, v in data_options(read_json(init_config)).items() if k != "seed"} \
        if init_config and init_config.is_file() else {}  # fine-tune on the images the init run saw (size, RGB)
    metrics = train(dataset, out, model=model, data_dir=data_dir, train_config=train_config, hook=hook,
                    resume=resume, overwrite=overwrite, init_from=init_from, extra_config={"defense": hook_spec},
                    **data)
    whitebox = whitebox_evaluation([out], out / "eval", dataset=dataset, data_dir=data_dir, attacks=eval_attacks,
                                   eps=eval_eps, norm=norm, n=eval_n, seed=train_config.seed,
                                   attack_kwargs={"pgd": {"restarts": pgd_restarts, "steps": 20}}, grid=False,
                                   device=train_config.device)
    records = defense_records(whitebox, hook_spec, metrics)
    write_json(out / "defense.json", records)
    return records, whitebox
