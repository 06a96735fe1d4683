"""``medshield train | evaluate | download | datasets | models``: data and models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshield import api
from medshield.cli.common import CommandGroup, DataDir, Dataset, Device, RunDataset, Seed, Split, emit, headline, user_errors
from medshield.data import dataset_names, download_medmnist, resolve_data_dir
from medshield.models import model_names
from medshield.models.train import TrainConfig

group = CommandGroup("Data and models")


@group.command()
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
    pretrained: Annotated[str | None, typer.Option(
        help="'imagenet' (torch hub cache), a weights file, or a run folder (its backbone, new head).")] = None,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train the new head only.")] = False,
    device: Device = "cpu",
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run.")] = False,
) -> None:
    """Train a classifier; writes OUT/model.safetensors, config.json, metrics.json."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, augment=augment,
                      seed=seed, device=device)
    metrics = api.train(dataset, out, model=model, data_dir=data_dir, size=size, rgb=rgb, resize=resize,
                        single_logit=single_logit, pretrained=pretrained, freeze_backbone=freeze_backbone,
                        train_config=cfg, resume=resume, overwrite=overwrite)
    emit({"test": headline(metrics["test"]), "train_seconds": metrics["train_seconds"], "out": str(out)})


@group.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Option("--run", help="Run directory.")],
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
) -> None:
    """Evaluate a run; prints the metrics block and writes RUN/eval-<split>.json."""
    metrics = api.evaluate(run, dataset, data_dir, split)
    emit({split: {**headline(metrics), "ci": metrics.get("ci")}})


@group.command()
@user_errors
def download(
    dataset: Dataset,
    data_dir: DataDir = None,
) -> None:
    """Download a 28x28 MedMNIST file and verify its MD5 (needs a network)."""
    typer.echo(str(download_medmnist(dataset.lower(), resolve_data_dir(data_dir))))


@group.command()
def datasets() -> None:
    """List dataset names."""
    typer.echo("\n".join(dataset_names()))


@group.command()
def models() -> None:
    """List model names."""
    typer.echo("\n".join(model_names()))
