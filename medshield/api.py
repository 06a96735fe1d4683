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


def blackbox(run: str | Path, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
             attacks: list[str] | None = None, budgets: list[int] | None = None, n_images: int = 50,
             defenses: list[str] | None = None, seed: int = 0, norm: str = "l2", split: str = "test",
             shard_size: int = 10) -> dict[str, Any]:
    """Decision-based black-box evaluation (thesis chapter 5); writes ``OUT/blackbox.json``,
    ``OUT/l2_vs_queries.png``, ``OUT/strips.png`` and ``OUT/blackbox.md``; resumable (``OUT/jobs.json``)."""
    from medshield.evaluation.blackbox import BlackboxConfig, run_blackbox
    from medshield.report.blackbox_plots import markdown_table, plot_l2_vs_queries, plot_strips

    cfg = BlackboxConfig(n_images=n_images, seed=seed, norm=norm, shard_size=shard_size)
    cfg.attacks = attacks or list(cfg.attacks)
    cfg.budgets = sorted(budgets or list(cfg.budgets))
    cfg.defenses = defenses or list(cfg.defenses)
    if n_images < 1 or any(b < 1 for b in cfg.budgets):
        raise MedShieldError("--n-images and every --budgets value must be positive")
    model, ds, _ = load_run_and_data(run, dataset, data_dir)
    out = Path(out)
    summary = run_blackbox(model, ds.split(split), out, cfg)
    summary.update(run=str(run), dataset=ds.name, split=split)
    write_json(out / "blackbox.json", summary)
    plot_l2_vs_queries(summary, out / "l2_vs_queries.png")
    plot_strips(summary, out / "strips.png")
    (out / "blackbox.md").write_text(markdown_table(summary))
    return summary
