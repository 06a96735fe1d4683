"""The ``medshield`` command line: argument parsing that calls :mod:`medshield.api`; no logic here."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medshield.errors import MedShieldError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MedShield: security testing of medical-image classifiers.")
F = TypeVar("F", bound=Callable[..., Any])

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data root (default $MEDSHIELD_DATA).")]
Dataset = Annotated[str, typer.Option("--dataset", help="demo, pneumoniamnist, breastmnist, chest_xray, ...")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (runs are reproducible).")]


def user_errors(func: F) -> F:
    """Turn user errors into one line on stderr and exit code 2 (``MEDSHIELD_DEBUG=1`` shows tracebacks)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (MedShieldError, ValueError, FileNotFoundError, PermissionError) as exc:
            if os.environ.get("MEDSHIELD_DEBUG"):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def emit(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "sensitivity", "specificity", "auc") if k in metrics}


@app.command()
@user_errors
def train(
    dataset: Dataset,
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    model: Annotated[str, typer.Option("--model", help="smallcnn, resnet18, resnet50, densenet121")] = "smallcnn",
    data_dir: DataDir = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 5,
    augment: Annotated[bool, typer.Option(help="Random rotation/translation/scaling.")] = True,
    size: Annotated[int | None, typer.Option(help="Image size (MedMNIST file size / folder resize).")] = None,
    resize: Annotated[int | None, typer.Option(help="Resize images after loading.")] = None,
    rgb: Annotated[bool, typer.Option("--rgb", help="Present grey images as 3-channel RGB.")] = False,
    single_logit: Annotated[bool, typer.Option("--single-logit", help="One sigmoid logit (binary).")] = False,
    pretrained: Annotated[str | None, typer.Option(help="'imagenet' (torch hub cache) or a weights file.")] = None,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train the new head only.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run.")] = False,
) -> None:
    """Train a classifier; writes OUT/model.safetensors, config.json, metrics.json."""
    from medshield import api
    from medshield.models.train import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, augment=augment,
                      seed=seed, device=device)
    metrics = api.train(dataset, out, model=model, data_dir=data_dir, size=size, rgb=rgb, resize=resize,
                        single_logit=single_logit, pretrained=pretrained, freeze_backbone=freeze_backbone,
                        train_config=cfg, resume=resume, overwrite=overwrite)
    emit({"test": headline(metrics["test"]), "train_seconds": metrics["train_seconds"], "out": str(out)})


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Option("--run", help="Run directory.")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
    data_dir: DataDir = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
) -> None:
    """Evaluate a run; prints the metrics block and writes RUN/eval-<split>.json."""
    from medshield import api

    metrics = api.evaluate(run, dataset, data_dir, split)
    emit({split: {**headline(metrics), "ci": metrics.get("ci")}})


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    seed: Seed = 0,
) -> None:
    """Train on the built-in synthetic chest phantoms and evaluate (runs offline)."""
    from medshield import api

    metrics = api.demo(out, epochs=epochs, seed=seed)
    emit({"test": headline(metrics["test"]), "train_seconds": metrics["train_seconds"], "out": str(out)})


@app.command()
def datasets() -> None:
    """List dataset names."""
    from medshield.data import dataset_names

    typer.echo("\n".join(dataset_names()))


@app.command()
def models() -> None:
    """List model names."""
    from medshield.models import model_names

    typer.echo("\n".join(model_names()))


def split_list(text: str, kind: type = str) -> list[Any]:
    """``"a,b"`` -> ``["a", "b"]`` (``kind=int`` for numbers, with a clear error)."""
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MedShieldError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


@app.command()
@user_errors
def blackbox(
    run: Annotated[Path, typer.Option("--run", help="Run directory of the model to attack.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
    data_dir: DataDir = None,
    attack: Annotated[str, typer.Option("--attack", help="Comma list: hsja, gbba, opt, sign_opt, boundary.")] = "hsja,gbba,opt",
    budgets: Annotated[str, typer.Option("--budgets", help="Comma list of query budgets per image.")] = "1000,5000,10000,15000,20000",
    n_images: Annotated[int, typer.Option("--n-images", help="Correctly classified test images (seeded choice).")] = 50,
    defense: Annotated[str, typer.Option("--defense", help="Comma list of inference-time defenses.")] = "none",
    norm: Annotated[str, typer.Option("--norm", help="l2 or linf.")] = "l2",
    seed: Seed = 0,
) -> None:
    """Decision-based black-box attacks at several query budgets; writes OUT/blackbox.json, plots, table."""
    from medshield import api

    summary = api.blackbox(run, out, dataset=dataset, data_dir=data_dir, attacks=split_list(attack),
                           budgets=split_list(budgets, int), n_images=n_images, defenses=split_list(defense),
                           seed=seed, norm=norm)
    emit([{k: r[k] for k in ("attack", "defense", "budget", "mean_l2", "median_l2", "success_rate")}
          for r in summary["records"]])


def main() -> None:
    logging.basicConfig(level=os.environ.get("MEDSHIELD_LOG", "INFO"), format="%(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
