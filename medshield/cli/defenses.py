"""``medshield defend | defense-report | detect | defense-tradeoff``: training-time defenses, stream
detection and the clean-input cost of noise defenses (issues 4 and 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshield import api
from medshield.cli.common import (CommandGroup, DataDir, Dataset, Device, MaxCleanDrop, RunDataset, Seed, Split, TargetOpt,
                                  alias, calibration_config, emit, refs, user_errors)
from medshield.defenses.inference import defense_parameters
from medshield.errors import MedShieldError
from medshield.evaluation.defense import EVAL_ATTACKS
from medshield.evaluation.detection import DetectionConfig
from medshield.models.train import TrainConfig
from medshield.types import EPS, eps_label, parse_eps, parse_eps_value, parse_floats, split_list

DETECT_ATTACKS = ",".join(DetectionConfig.attacks)
DND_DEFAULTS = defense_parameters("dnd")

group = CommandGroup("Defenses")


@group.command()
@user_errors
def defend(
    dataset: Dataset,
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    training_defense: Annotated[str | None, typer.Option("--training-defense", help="at, ant, noise or none.")] = None,
    model: Annotated[str, typer.Option(help="smallcnn, resnet18, resnet50, densenet121")] = "smallcnn",
    data_dir: DataDir = None,
    train_attack: Annotated[str, typer.Option(help="Attack that makes the training adversarials.")] = "mifgsm",
    train_eps: Annotated[str, typer.Option(help="Training eps, e.g. 2/255.")] = eps_label(EPS),
    train_steps: Annotated[int | None, typer.Option(help="Steps of the training attack.")] = None,
    source: Annotated[str, typer.Option(help="online (current model, Madry) or fixed (a pre-trained run).")] = "online",
    source_run: Annotated[Path | None, typer.Option(help="Pre-trained run attacked when --source fixed.")] = None,
    init_from: Annotated[Path | None, typer.Option(help="Start from this run's weights (fine-tune).")] = None,
    noise_mean: Annotated[float, typer.Option(help="Gaussian noise mean (ant, noise).")] = 0.0,
    noise_sigma: Annotated[float | None, typer.Option(help="Gaussian noise std (ant, noise); default: calibrated to "
                                                      "--max-clean-drop when fine-tuning (--init-from), else 0.05.")] = None,
    max_clean_drop: MaxCleanDrop = 0.01,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    eval_attacks: Annotated[str, typer.Option(help="Attacks for the evaluation.")] = ",".join(EVAL_ATTACKS),
    eval_eps: Annotated[str, typer.Option(help="Evaluation eps values.")] = eps_label(EPS),
    n_images: Annotated[int | None, typer.Option("--n-images", help="Evaluate on N test images (default all).")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run.")] = False,
    defense_old: Annotated[str | None, typer.Option("--defense", hidden=True)] = None,
    eval_n_old: Annotated[int | None, typer.Option("--eval-n", hidden=True)] = None,
) -> None:
    """Train a defended model (AT, ANT, noise) and evaluate it against every attack: OUT/defense.json."""
    defense = alias(training_defense, defense_old)
    if not defense:
        raise MedShieldError("give the defense to train: --training-defense at|ant|noise|none")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    records = api.defend(dataset, out, defense, model=model, data_dir=data_dir, train_attack=train_attack,
                         train_eps=parse_eps_value(train_eps), train_steps=train_steps, source=source,
                         source_run=source_run, init_from=init_from, noise_mean=noise_mean, noise_sigma=noise_sigma,
                         train_config=cfg, eval_attacks=split_list(eval_attacks), eval_eps=parse_eps(eval_eps),
                         eval_n=alias(n_images, eval_n_old), resume=resume, overwrite=overwrite,
                         calibration=calibration_config(max_clean_drop, seed))
    emit([{k: r[k] for k in ("label", "eval_attack", "eps_label", "clean_accuracy", "robust_accuracy")} for r in records])


@group.command("defense-report")
@user_errors
def defense_report(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    run: Annotated[str | None, typer.Option("--run", help="Comma-separated defended run folders.")] = None,
    runs_old: Annotated[str | None, typer.Option("--runs", hidden=True)] = None,
) -> None:
    """Defense x attack table, bar chart and training curves from defended runs."""
    runs = split_list(alias(run, runs_old) or "")
    if not runs:
        raise MedShieldError("give the defended runs: --run A,B (folders written by medshield defend)")
    api.defense_report(runs, out)
    typer.echo((Path(out) / "defense.md").read_text())


@group.command()
@user_errors
def detect(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    run: Annotated[str | None, typer.Option("--run", help="Run directory of the model to attack.")] = None,
    target: TargetOpt = None,
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    attacks: Annotated[str, typer.Option("--attacks", help="Comma list of attacks whose streams to detect.")] = DETECT_ATTACKS,
    n_images: Annotated[int | None, typer.Option("--n-images", help="Attacked test images per attack.")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Queries per attacked image.")] = None,
    within: Annotated[int | None, typer.Option("--within", help="Report streams flagged within this many queries.")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Detector: nearest neighbours averaged.")] = None,
    feature_size: Annotated[int | None, typer.Option("--feature-size", help="Detector: pooled image side.")] = None,
    flag_after: Annotated[int | None, typer.Option("--flag-after", help="Detector: suspicious queries before flagging.")] = None,
    fpr: Annotated[float | None, typer.Option("--fpr", help="Per-query false-positive rate for the threshold (train images).")] = None,
    n_streams: Annotated[int | None, typer.Option("--n-streams", help="Benign client streams per kind.")] = None,
    seed: Seed = 0,
    attack_old: Annotated[str | None, typer.Option("--attack", hidden=True)] = None,
) -> None:
    """Stream detection: when attack query streams get flagged, and false positives on benign streams."""
    names = split_list(alias(attacks, attack_old, DETECT_ATTACKS))
    summary = api.detect(refs(run, target), out, dataset=dataset, data_dir=data_dir, attacks=tuple(names),
                         n_images=n_images, budget=budget, within=within, k=k, feature_size=feature_size,
                         flag_after=flag_after, fpr=fpr, n_streams=n_streams, seed=seed)
    emit([{key: r[key] for key in ("kind", "n_streams", "flagged_fraction", "flagged_at_median", "flagged_at_max")}
          for r in summary["records"]])


@group.command("defense-tradeoff")
@user_errors
def defense_tradeoff(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    run: Annotated[str | None, typer.Option("--run", help="Run directory of the model.")] = None,
    target: TargetOpt = None,
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    nu: Annotated[str, typer.Option("--nu", help="RND noise levels.")] = "0,0.01,0.02,0.03,0.04,0.05,0.075,0.1,0.15,0.2",
    m: Annotated[str, typer.Option("--m", help="DND query-noise levels (n fixed at --n-fixed).")] = "0,0.01,0.02,0.03,0.04,0.05,0.075,0.1,0.15,0.2",
    n: Annotated[str, typer.Option("--n", help="DND score-noise levels (m fixed at --m-fixed).")] = "0,0.25,0.5,0.75,1,1.5,2,3",
    n_fixed: Annotated[float, typer.Option("--n-fixed", help="DND n during the m sweep.")] = DND_DEFAULTS["n"],
    m_fixed: Annotated[float, typer.Option("--m-fixed", help="DND m during the n sweep.")] = DND_DEFAULTS["m"],
    max_drop: Annotated[float, typer.Option("--max-drop", help="Accepted clean-accuracy drop (0.02 = 2 points).")] = 0.02,
    repeats: Annotated[int, typer.Option("--repeats", help="Noisy passes over the split per setting.")] = 3,
    split: Split = "test",
    seed: Seed = 0,
) -> None:
    """Clean accuracy and flip rate vs noise level for RND and DND; writes OUT/tradeoff.json/.md/.png."""
    summary = api.defense_tradeoff(refs(run, target), out, dataset=dataset, data_dir=data_dir,
                                   nu_grid=list(parse_floats(nu, "--nu")), m_grid=list(parse_floats(m, "--m")),
                                   n_grid=list(parse_floats(n, "--n")), n_fixed=n_fixed, m_fixed=m_fixed,
                                   max_drop=max_drop, repeats=repeats, split=split, seed=seed)
    emit({"undefended_accuracy": summary["undefended_accuracy"], "chosen": summary["chosen"]})
