"""Shared services of the upper layers: load a target and its data, train and evaluate a model, choose
the evaluation images, run a white-box evaluation and a training-time defense. The API (and so the CLI
and the HTTP server) and the campaign jobs both call these; they write records, never reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from medshield.attacks import ATTACKS
from medshield.data import Dataset, load_dataset
from medshield.defenses.inference import DefenseSpec
from medshield.defenses.training import build_training_hook
from medshield.errors import MedShieldError
from medshield.evaluation.calibration import (CalibrationConfig, calibrate_dataset, calibrate_training_sigma,
                                              calibration_summary, needs_calibration, resolve_defense)
from medshield.evaluation.defense import EVAL_ATTACKS, defense_records
from medshield.evaluation.identity import data_identity, job_identity, model_fingerprint
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
    and ``metrics.json`` (``{"test": {...}, "train_seconds": ...}``) into ``out``.

    ``pretrained`` is ``"imagenet"`` (torch hub cache), a weights file, or another run folder whose
    backbone (same architecture, channels and stem; its head is skipped) starts this model;
    ``freeze_backbone`` trains the new head only. ``config.json`` records the source and its digest."""
    cfg = train_config or TrainConfig()
    out = Path(out)
    ds = load_dataset(dataset, data_dir, size=size, rgb=rgb, resize=resize, seed=cfg.seed)
    if pretrained and Path(pretrained).resolve() == out.resolve():
        raise MedShieldError(f"--pretrained {pretrained} is the run being trained (--out); give another run")
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
    noise_sigma: float | None = None,
    train_config: TrainConfig | None = None,
    eval_attacks: Sequence[str] = EVAL_ATTACKS,
    eval_eps: Sequence[float] = (EPS,),
    eval_n: int | None = None,
    pgd_restarts: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    calibration: CalibrationConfig | None = CalibrationConfig(),
    sigma_epochs: int = 1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train a defended model (``at``, ``ant``, ``noise`` or ``none``) and evaluate it white-box against
    every attack (PGD with restarts included) into ``OUT/eval``; writes the run plus ``OUT/defense.json``.
    Without ``noise_sigma``, ``noise``/``ant`` fine-tuning from ``init_from`` calibrate it to
    ``calibration``'s tolerance (:func:`training_sigma`); from scratch they use sigma = 0.05.
    Returns the defense records and the white-box records (for a report)."""
    train_config = train_config or TrainConfig()
    sigma_record = sigma_summary = None
    if noise_sigma is None:
        noise_sigma, sigma_record = training_sigma(dataset, out, defense, data_dir, train_attack, train_eps,
                                                   train_steps, norm, init_from, noise_mean, train_config,
                                                   calibration, sigma_epochs, resume)
        sigma_summary = sigma_record and (calibration_summary(sigma_record) if "curve" in sigma_record else sigma_record)
    hook_spec = {"defense": defense, "train_attack": train_attack if defense in ("at", "ant") else None,
                 "train_eps": train_eps, "train_steps": train_steps, "norm": str(norm), "source": source,
                 "source_run": str(source_run) if source_run else None, "init_from": str(init_from) if init_from else None,
                 "noise_mean": noise_mean, "noise_sigma": noise_sigma,
                 **({"sigma_calibration": sigma_summary} if sigma_summary else {})}
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
    if sigma_record and "curve" in sigma_record:
        write_json(out / "sigma_calibration.json", sigma_record)
    if sigma_summary:
        records = [{**r, "noise_sigma": noise_sigma, "sigma_calibration": sigma_summary} for r in records]
    write_json(out / "defense.json", records)
    return records, whitebox


NOISE_SIGMA = 0.05
"""The noise-training sigma where it is not calibrated (training from scratch)."""


def training_sigma(dataset: str, out: str | Path, defense: str, data_dir: str | Path | None, train_attack: str,
                   eps: float, train_steps: int | None, norm: Norm, init_from: str | Path | None, noise_mean: float,
                   train_config: TrainConfig, calibration: CalibrationConfig | None, sigma_epochs: int,
                   resume: bool) -> tuple[float, dict[str, Any] | None]:
    """The sigma of ``noise``/``ant`` training when none is given: calibrated on the validation split by
    short fine-tunes of ``init_from`` (:func:`medshield.evaluation.calibration.calibrate_training_sigma`;
    :func:`train_defended` writes the record to ``OUT/sigma_calibration.json``; a resumed run reuses the
    summary in its ``config.json``), else 0.05."""
    if defense not in ("noise", "ant") or init_from is None or calibration is None:
        return NOISE_SIGMA, None
    previous = Path(out) / CONFIG_FILE
    if resume and previous.is_file() and "sigma_calibration" in read_json(previous).get("defense", {}):
        spec = read_json(previous)["defense"]
        return spec["noise_sigma"], spec["sigma_calibration"]  # the interrupted run's calibration (summary)
    base, config = load_run(Path(init_from), train_config.device)
    ds = load_dataset(dataset, data_dir, **{**data_options(config), "seed": train_config.seed})

    def make_hook(sigma: float) -> BatchHook:
        return build_training_hook(defense, train_attack, eps, norm=norm, steps=train_steps, mean=noise_mean, sigma=sigma)

    short = TrainConfig(**{**train_config.__dict__, "epochs": sigma_epochs})
    rec = calibrate_training_sigma(base, ds, make_hook, short, calibration)
    return rec["value"], rec


def calibrate_defenses(model: torch.nn.Module, ds: Dataset, specs: Sequence[DefenseSpec],
                       calibration: CalibrationConfig | None, out: Path, run: str,
                       identity: dict[str, Any] | None = None,
                       overwrite: bool = False) -> tuple[list[DefenseSpec], list[dict[str, Any]]]:
    """Resolve parameter-less noise defenses to their calibrated setting (see
    :mod:`medshield.evaluation.calibration`); calibrations are kept in ``OUT/jobs.json`` so a resumed
    run reuses them, only for the same model and data (``identity``). Returns the specs to evaluate and
    the calibration records."""
    resolved, records = [], []
    store = RecordStore(Path(out) / "jobs.json", overwrite=overwrite)
    for spec in specs:
        if calibration is None or not needs_calibration(spec.name, spec.explicit):
            resolved.append(spec)
            continue
        key = f"calibration|{spec}|{json.dumps(calibration.to_dict(), sort_keys=True)}"
        inputs = None if identity is None else job_identity(**identity, defense=str(spec),
                                                             calibration=calibration.to_dict())
        rec = store.get_or_run(key, lambda: calibrate_dataset(model, ds, spec, calibration, run), inputs)
        resolved.append(DefenseSpec.parse(rec["resolved"]))
        records.append(rec)
    return resolved, records


def attach_calibrations(records: list[dict[str, Any]], calibrations: list[dict[str, Any]]) -> None:
    """Give each black-box record of a calibrated defense its ``calibration`` (chosen params, tolerance,
    validation and test costs), matched by the full spec label."""
    by_label = {c["spec_label"]: calibration_summary(c) for c in calibrations}
    for rec in records:
        if rec.get("defense_spec") in by_label:
            rec["calibration"] = by_label[rec["defense_spec"]]


def serving_defense(run: str | Path, spec: DefenseSpec | None, data_dir: str | Path | None,
                    calibration: CalibrationConfig | None) -> DefenseSpec | None:
    """The defense to serve: ``rnd``/``dnd`` without parameters are calibrated once, before serving,
    on the run's validation split (so every worker serves the same setting); explicit ones as given."""
    if spec is None or calibration is None or not needs_calibration(spec.name, spec.explicit):
        return spec
    try:
        model, ds, _ = load_run_and_data(run, None, data_dir)
    except MedShieldError as exc:
        raise MedShieldError(f"calibrating --defense {spec} needs the run's validation data (--data-dir), or give its "
                             f"parameters (e.g. rnd:nu=0.02): {exc}") from exc
    resolved, rec = resolve_defense(model, ds, spec, calibration, Path(run).name)
    if rec is not None:
        val, test = rec["validation"], rec.get("test", {})
        log.warning("serving %s calibrated to <= %g accuracy / %g sensitivity drop on the validation split: %s "
                    "(validation drop %.4f / %.4f, test %.4f / %.4f)", spec, rec["tolerance"]["accuracy"],
                    rec["tolerance"]["sensitivity"], resolved, val["accuracy_drop"], val["sensitivity_drop"],
                    test.get("accuracy_drop", float("nan")), test.get("sensitivity_drop", float("nan")))
    return resolved
