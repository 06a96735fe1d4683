"""The service functions that both shells (CLI and HTTP server) call."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medshield.attacks import create_attack
from medshield.campaign.audit import audit as run_audit
from medshield.campaign.audit import demo as run_demo
from medshield.campaign.thesis import reproduce_thesis as run_thesis
from medshield.data import Dataset, load_dataset
from medshield.defenses.inference import DefenseSpec
from medshield.errors import MedShieldError
from medshield.evaluation.calibration import CalibrationConfig
from medshield.evaluation.blackbox import BlackboxConfig, run_blackbox
from medshield.evaluation.defended import tradeoff_sweeps
from medshield.evaluation.defense import EVAL_ATTACKS, unique_labels
from medshield.evaluation.detection import DetectionConfig, detection_markdown, run_detection
from medshield.evaluation.identity import data_identity, model_fingerprint
from medshield.evaluation.multilabel import (
    FindingAttackConfig, clean_finding_metrics, finding_blackbox_records, finding_whitebox_records,
)
from medshield.evaluation.services import (  # noqa: F401  (re-exported: the API's own service functions)
    attach_calibrations, calibrate_defenses, eval_images, evaluate_model, evaluate_run, load_run_and_data,
    load_target_and_data, model_label, prepare_run_dir, run_info, seeded, serving_defense, train, train_defended,
    training_sigma, whitebox_evaluation,
)
from medshield.evaluation.store import RecordStore
from medshield.evaluation.target_check import check_target
from medshield.evaluation.transfer import accuracy_matrix, transfer_records
from medshield.evaluation.whitebox import GRID_EXAMPLES, WHITEBOX_ATTACKS, load_grid_examples
from medshield.models import load_run
from medshield.models.checkpoint import read_json, write_json
from medshield.models.train import TrainConfig
from medshield.report import heatmap, pivot_table
from medshield.report.blackbox_plots import markdown_table, plot_l2_vs_queries, plot_strips
from medshield.report.calibration_plot import calibration_markdown, plot_calibration
from medshield.report.defense import write_defense_report
from medshield.report.tradeoff_plot import plot_tradeoff, tradeoff_markdown
from medshield.report.whitebox import write_whitebox_report
from medshield.targets import GRADIENTS_UNAVAILABLE, Target
from medshield.targets.medshield_api import RemoteClassifier
from medshield.targets.remote import remote_counts
from medshield.types import EPS, EPS_GRID, Norm, eps_label

log = logging.getLogger(__name__)

evaluate = evaluate_run
"""Evaluate a trained run; writes ``RUN/eval-<split>.json`` (see :func:`medshield.evaluation.services.evaluate_run`)."""


def target_check(card: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
                 manifest: str | Path | None = None, split: str = "test", n: int | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Load a target card (or run), run the data through it and report what was found (one JSON object:
    shapes, output ranges, ``test.accuracy`` and metrics, gradients, determinism)."""
    target, ds = load_target_and_data(card, dataset, data_dir, device, manifest)
    return check_target(target, ds, split=split, n=n)


def demo(out: str | Path = "runs/demo", epochs: int = 5, seed: int = 0, workers: int | None = None,
         train_only: bool = False) -> dict[str, Any]:
    """Train on the built-in synthetic phantoms and audit (see :func:`medshield.campaign.audit.demo`)."""
    return run_demo(out, epochs=epochs, seed=seed, workers=workers, train_only=train_only)


def audit(runs: list[str], out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
          config: Any = None, **overrides: Any) -> dict[str, Any]:
    """The one-command security audit (see :func:`medshield.campaign.audit.audit`)."""
    return run_audit(runs, out, dataset=dataset, data_dir=data_dir, config=config, **overrides)


def reproduce_thesis(data_dir: str | Path, out: str | Path, preset: str = "quick", workers: int | None = None,
                     executor: str | None = None, address: str | None = None, config: str | Path | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """The thesis's experiment grid beside its published numbers (see :mod:`medshield.campaign.thesis`)."""
    return run_thesis(data_dir, out, preset=preset, workers=workers, executor=executor, address=address, config=config,
                      overwrite=overwrite)


# ---- white-box attacks and transferability (issue 3) ----

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
    ``OUT/whitebox.json``, ``whitebox.md``, ``robust_vs_eps.png`` and, from the stored example images
    (``grid_examples.npz``), ``grid.png``."""
    records = whitebox_evaluation(runs, out, dataset, data_dir, attacks=attacks, eps=eps, norm=norm, split=split, n=n,
                                  batch_size=batch_size, seed=seed, direction=direction, attack_kwargs=attack_kwargs,
                                  grid=grid, device=device, overwrite=overwrite)
    write_whitebox_report(records, Path(out), load_grid_examples(Path(out) / GRID_EXAMPLES) if grid else None)
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
    x, y = eval_images(ds, split, n, seed)
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
) -> list[dict[str, Any]]:
    """Train a defended model (``at``, ``ant``, ``noise`` or ``none``) and evaluate it white-box against
    every attack (PGD with restarts included); writes the run plus ``OUT/defense.json`` and the white-box
    report in ``OUT/eval``. Without ``noise_sigma``, ``noise``/``ant`` fine-tuning from ``init_from``
    calibrate it to ``calibration``'s tolerance (:func:`training_sigma`); from scratch sigma = 0.05."""
    records, whitebox = train_defended(
        dataset, out, defense, model=model, data_dir=data_dir, train_attack=train_attack, train_eps=train_eps,
        train_steps=train_steps, norm=norm, source=source, source_run=source_run, init_from=init_from,
        noise_mean=noise_mean, noise_sigma=noise_sigma, train_config=train_config, eval_attacks=eval_attacks,
        eval_eps=eval_eps, eval_n=eval_n, pgd_restarts=pgd_restarts, resume=resume, overwrite=overwrite,
        calibration=calibration, sigma_epochs=sigma_epochs)
    write_whitebox_report(whitebox, Path(out) / "eval")
    return records


def defense_report(runs: Sequence[str | Path], out: str | Path) -> list[dict[str, Any]]:
    """Combine defended runs' ``defense.json`` into ``OUT/defense.json``, ``defense.md``, the bar chart
    (thesis Fig. 4-5) and training curves (Fig. 4-6)."""
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

def blackbox(run: str | Path | None, out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
             attacks: Sequence[str] | None = None, budgets: Sequence[int] | None = None, n_images: int = 50,
             defenses: Sequence[DefenseSpec] | None = None, seed: int = 0, norm: Norm = Norm.L2, split: str = "test",
             shard_size: int = 10, target: str | None = None, api_key: str | None = None,
             batch_size: int | None = None, adaptive_k: int = 1, device: str = "cpu",
             surrogate: str | Path | None = None, overwrite: bool = False,
             calibration: CalibrationConfig | None = CalibrationConfig(), layout: str = "contiguous") -> dict[str, Any]:
    """Decision-based black-box evaluation (thesis chapter 5) of a local run, or of a live service with
    ``target`` (its URL) and ``api_key``; writes ``OUT/blackbox.json``, ``OUT/l2_vs_queries.png``,
    ``OUT/strips.png`` and ``OUT/blackbox.md``; resumable (``OUT/jobs.json``). ``defenses`` are
    :class:`DefenseSpec` values; ``adaptive_k`` > 1 makes the attacker take a majority over k repeats;
    ``surrogate`` is the attacker's own run (the ``surrogate`` attack's substitute model); ``layout``
    ``"auto"`` lets a measurement pick channels-last where faster (logits differ in the last bit, so the
    default pins ``"contiguous"`` and a seed reproduces bit for bit). Stored jobs
    are reused only from the same model (or service), data, defense, attack, budgets and seed; others
    are refused naming the difference, or recomputed with ``overwrite``.
    Parameter-less ``rnd``/``dnd`` are calibrated to ``calibration``'s tolerance on the validation split
    (None: registry defaults); ``OUT/calibration.png`` shows the search."""
    cfg = BlackboxConfig(n_images=n_images, seed=seed, norm=str(norm), shard_size=shard_size, adaptive_k=adaptive_k,
                         surrogate_run=str(surrogate) if surrogate else None, layout=layout)
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
        cfg.defenses, calibrations = calibrate_defenses(system.model, ds, cfg.defenses, calibration, out,
                                                        system.name, identity, overwrite)
        summary = run_blackbox(system.model, part, out, cfg, positive_class=ds.positive_class, surrogate=substitute,
                               identity=identity, overwrite=overwrite)
        attach_calibrations(summary["records"], calibrations)
        summary["calibrations"] = calibrations
        summary["target_identity"] = system.identity()
        if before is not None:  # a remote target: what went over the network during this run
            summary["remote"] = {k: v - before[k] for k, v in (remote_counts(system.model) or before).items()}
    summary.update(run=str(run) if run else None, dataset=ds.name, split=split)
    write_json(out / "blackbox.json", summary)
    plot_l2_vs_queries(summary, out / "l2_vs_queries.png")
    plot_strips(summary, out / "strips.png")
    table = markdown_table(summary)
    if summary.get("calibrations"):
        plot_calibration(summary["calibrations"], out / "calibration.png")
        table += ("\n## Calibrated defenses (validation split; drops in points ± SE)\n\n"
                  + calibration_markdown(summary["calibrations"]))
    (out / "blackbox.md").write_text(table)
    return summary


def _remote_blackbox(target: str, api_key: str | None, dataset: str | None, data_dir: str | Path | None,
                     split: str, out: Path, cfg: Any, surrogate: Any = None,
                     overwrite: bool = False) -> tuple[dict[str, Any], Dataset]:
    """Attack a live MedShield service: queries are packed into batch requests of ``cfg.batch_size``."""
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
    x, _ = eval_images(ds, split, n_images, seed)
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
