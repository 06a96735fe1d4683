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

from medshield.cli_target import TargetOpt, refs
from medshield.defenses.inference import DefenseSpec
from medshield.errors import MedShieldError, removed_on_user_error
from medshield.types import EPS_GRID, Norm, eps_label, parse_budgets, parse_eps, parse_eps_value, split_list

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MedShield: security testing of medical-image classifiers.")
F = TypeVar("F", bound=Callable[..., Any])

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data root (default $MEDSHIELD_DATA).")]
Dataset = Annotated[str, typer.Option("--dataset", help="demo, pneumoniamnist, breastmnist, chest_xray, ...")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (runs are reproducible).")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Recompute jobs whose stored results came from other inputs (model, data, parameters).")]
FailOn = Annotated[str | None, typer.Option("--fail-on", metavar="high|medium|low",
                                            help="For CI: exit with status 3 when a finding at or above this "
                                                 "severity exists (see docs/audit.md for the rules).")]


def check_level(level: str | None) -> None:
    if level is not None and level not in ("high", "medium", "low"):
        raise MedShieldError(f"--fail-on must be high, medium or low, got {level!r}")


USER_ERRORS = (MedShieldError, ValueError, FileNotFoundError, PermissionError)
OUTPUT_OPTIONS = ("out",)  # parameters naming a folder the command creates: removed again if it fails


def user_errors(func: F) -> F:
    """Turn user errors into one line on stderr and exit code 2 (``MEDSHIELD_DEBUG=1`` shows tracebacks)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outputs = [v for k, v in kwargs.items() if k in OUTPUT_OPTIONS and isinstance(v, Path)]
        try:
            with removed_on_user_error(outputs, USER_ERRORS):
                return func(*args, **kwargs)
        except USER_ERRORS as exc:
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
    device: Device = "cpu",
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
    out: Annotated[Path, typer.Option("--out", help="Output folder (models and report; resumable).")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs of the smallcnn (the resnet18 gets half).")] = 5,
    workers: Annotated[int | None, typer.Option(help="Parallel audit jobs (default: up to 2).")] = None,
    train_only: Annotated[bool, typer.Option("--train-only", help="Train the demo models, skip the audit.")] = False,
    seed: Seed = 0,
) -> None:
    """Train on the built-in synthetic chest phantoms and audit the models (offline; minutes on 2 CPU cores)."""
    import time

    from medshield import api

    start = time.perf_counter()
    res = api.demo(out, epochs=epochs, seed=seed, workers=workers, train_only=train_only)
    if train_only:
        emit(res)
        return
    emit({"report": str(out / "report" / "report.html"), "pdf": str(out / "report" / "report.pdf"),
          "markdown": str(out / "report" / "report.md"),
          "clean": [{"run": r["run"], **headline(r)} for r in res["clean"]],
          "wall_seconds": round(time.perf_counter() - start, 1)})


@app.command()
@user_errors
def audit(
    run: Annotated[str | None, typer.Option("--run", help="Run folder(s) to audit, comma-separated.")] = None,
    target: TargetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Report folder (resumable: re-run to continue).")] = Path("report"),
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
    data_dir: DataDir = None,
    config: Annotated[Path | None, typer.Option("--config", help="Campaign YAML (see --print-config).")] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel jobs.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
    seed: Annotated[int | None, typer.Option(help="Campaign seed (overrides the config).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the default campaign YAML and exit.")] = False,
    fail_on: FailOn = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute jobs whose stored results came from other inputs.")] = False,
) -> None:
    """One-command security audit: clean metrics, white-box, transfer, black-box with and without
    RND/DND, detection (and training defenses if the config asks); writes OUT/report.html, report.pdf,
    report.md, audit.json and findings.json.

    Exit status: 0 done, 2 bad input, 3 with --fail-on LEVEL when a finding at or above LEVEL exists."""
    from medshield import api

    check_level(fail_on)
    if print_config:
        from medshield.campaign.config import default_yaml

        typer.echo(default_yaml())
        return
    models = refs(run, target, "--run RUN (a folder written by medshield train) or --target CARD")
    res = api.audit(split_list(models), out, dataset=dataset, data_dir=data_dir,
                    config=config, executor=executor, workers=workers, address=address, seed=seed,
                    overwrite=overwrite)
    found = json.loads((out / "findings.json").read_text())
    emit({"report": str(out / "report.html"), "pdf": str(out / "report.pdf"), "markdown": str(out / "report.md"),
          "records": str(out / "audit.json"), "overall": found["overall"],
          "clean": [{"run": r["run"], **headline(r)} for r in res["clean"]]})
    if fail_on:
        from medshield.report.severity import RANK

        bad = [f for f in found["findings"] if RANK[f["severity"]] >= RANK[fail_on]]
        if bad:
            typer.echo(f"fail-on {fail_on}: {len(bad)} finding(s) at or above {fail_on}, worst: "
                       f"{bad[0]['title']} on {bad[0]['model']} ({bad[0]['severity']})", err=True)
            raise typer.Exit(3)


@app.command()
@user_errors
def compare(
    old: Annotated[Path, typer.Argument(help="The earlier audit: its audit.json or its folder.")],
    new: Annotated[Path, typer.Argument(help="The later audit (e.g. model v2): audit.json or folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for compare.json and compare.md.")] = Path("compare"),
    pair: Annotated[list[str] | None, typer.Option("--pair", metavar="OLD_RUN=NEW_RUN",
                                                   help="Model pairing, repeatable (default: same names, then the "
                                                        "remaining models in order).")] = None,
    fail_on: Annotated[str | None, typer.Option("--fail-on", metavar="high|medium|low",
                                                help="For CI: exit with status 3 when a threat's severity rose to "
                                                     "this level or above.")] = None,
) -> None:
    """What got better or worse between two audits; writes OUT/compare.json and OUT/compare.md.

    Exit status: 0 done, 2 bad input, 3 with --fail-on LEVEL when a threat's severity rose to LEVEL or
    above (or a newly tested threat is at LEVEL or above)."""
    from medshield.report.compare import regressions, write_compare

    check_level(fail_on)
    pairs = {}
    for item in pair or []:
        a, sep, b = item.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise MedShieldError(f"bad --pair {item!r}: expected OLD_RUN=NEW_RUN")
        pairs[a.strip()] = b.strip()
    cmp = write_compare(old, new, out, pairs)
    emit({"compare": str(out / "compare.md"), "records": str(out / "compare.json"), "overall": cmp["overall"],
          "counts": cmp["counts"]})
    if fail_on:
        bad = regressions(cmp, fail_on)
        if bad:
            typer.echo(f"fail-on {fail_on}: {len(bad)} threat(s) got worse to {fail_on} or above, e.g. "
                       f"{bad[0]['title']} ({bad[0]['key']})", err=True)
            raise typer.Exit(3)


@app.command()
@user_errors
def download(
    dataset: Dataset,
    data_dir: DataDir = None,
) -> None:
    """Download a 28x28 MedMNIST file and verify its MD5 (needs a network)."""
    from medshield.data import download_medmnist, resolve_data_dir

    typer.echo(str(download_medmnist(dataset.lower(), resolve_data_dir(data_dir))))


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


@app.command()
@user_errors
def attack(
    out: Annotated[Path, typer.Option("--out", help="Output folder (rerun to resume).")],
    run: Annotated[str | None, typer.Option("--run", help="Run directory; several comma-separated runs (e.g. grey,RGB) are compared side by side.")] = None,
    target: TargetOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
    data_dir: DataDir = None,
    attacks: Annotated[str, typer.Option("--attack", help="Comma-separated: fgsm,fgsm_iter,bim,pgd,mifgsm,cw.")] = "fgsm,bim,pgd,mifgsm,cw",
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated budgets; fractions like 2/255 allowed.")] = ",".join(map(eps_label, EPS_GRID)),
    norm: Annotated[str, typer.Option("--norm", help="linf or l2.")] = "linf",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    n: Annotated[int | None, typer.Option("--n", help="Attack n images drawn with --seed (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 128,
    direction: Annotated[str, typer.Option(help="both, disease_to_normal (missed diagnosis) or normal_to_disease (fraud).")] = "both",
    steps: Annotated[int | None, typer.Option(help="Iterations of the iterative attacks (default: each attack's own).")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """White-box attacks x eps; writes OUT/whitebox.json, whitebox.md, robust_vs_eps.png, grid.png."""
    from medshield import api

    names = split_list(attacks)
    kwargs = {a: {"steps": steps} for a in names if a != "fgsm"} if steps else None
    records = api.attack(split_list(refs(run, target)), out, dataset=dataset, data_dir=data_dir, attacks=names,
                         eps=parse_eps(eps, norm), norm=Norm.parse(norm), split=split,
                         n=n, batch_size=batch_size, seed=seed, direction=direction, attack_kwargs=kwargs,
                         device=device, overwrite=overwrite)
    keys = ("run", "attack", "eps_label", "clean_accuracy", "robust_accuracy", "success_rate")
    emit({"records": [{k: r[k] for k in keys} for r in records], "out": str(out)})


@app.command()
@user_errors
def transfer(
    out: Annotated[Path, typer.Option("--out", help="Output folder (rerun to resume).")],
    source: Annotated[str | None, typer.Option("--source", help="Comma-separated run directories (sources and targets).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target cards (comma-separated) joining the runs; one without gradients is a transfer target only.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the runs' dataset.")] = None,
    data_dir: DataDir = None,
    attack_name: Annotated[str, typer.Option("--attack", help="Attack used on each source.")] = "mifgsm",
    eps: Annotated[str, typer.Option("--eps", help="Budget, e.g. 2/255.")] = "2/255",
    norm: Annotated[str, typer.Option("--norm", help="linf or l2.")] = "linf",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    n: Annotated[int | None, typer.Option("--n", help="Use n images drawn with --seed (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 128,
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Transfer matrix: adversarials made on each source, accuracy of every target; writes OUT/transfer.json."""
    from medshield import api

    records = api.transfer(split_list(refs(source, target, "--source RUNS and/or --target CARDS")), out, dataset=dataset,
                           data_dir=data_dir, attack_name=attack_name, eps=parse_eps_value(eps, norm), norm=Norm.parse(norm),
                           split=split, n=n, batch_size=batch_size, seed=seed, device=device, overwrite=overwrite)
    emit({"matrix": [{k: r[k] for k in ("source", "target", "robust_accuracy")} for r in records], "out": str(out)})


@app.command()
@user_errors
def defend(
    dataset: Dataset,
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    defense: Annotated[str, typer.Option(help="at, ant, noise or none.")],
    model: Annotated[str, typer.Option(help="smallcnn, resnet18, resnet50, densenet121")] = "smallcnn",
    data_dir: DataDir = None,
    train_attack: Annotated[str, typer.Option(help="Attack that makes the training adversarials.")] = "mifgsm",
    train_eps: Annotated[str, typer.Option(help="Training eps, e.g. 2/255.")] = "2/255",
    train_steps: Annotated[int | None, typer.Option(help="Steps of the training attack.")] = None,
    source: Annotated[str, typer.Option(help="online (current model, Madry) or fixed (a pre-trained run).")] = "online",
    source_run: Annotated[Path | None, typer.Option(help="Pre-trained run attacked when --source fixed.")] = None,
    init_from: Annotated[Path | None, typer.Option(help="Start from this run's weights (fine-tune).")] = None,
    noise_mean: Annotated[float, typer.Option(help="Gaussian noise mean (ant, noise).")] = 0.0,
    noise_sigma: Annotated[float, typer.Option(help="Gaussian noise std (ant, noise).")] = 0.05,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    eval_attacks: Annotated[str, typer.Option(help="Attacks for the evaluation.")] = "fgsm,bim,mifgsm,pgd",
    eval_eps: Annotated[str, typer.Option(help="Evaluation eps values.")] = "2/255",
    eval_n: Annotated[int | None, typer.Option(help="Evaluate on N test images (default all).")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run.")] = False,
) -> None:
    """Train a defended model (AT, ANT, noise) and evaluate it against every attack: OUT/defense.json."""
    from medshield import api
    from medshield.models.train import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    records = api.defend(dataset, out, defense, model=model, data_dir=data_dir, train_attack=train_attack,
                         train_eps=parse_eps_value(train_eps), train_steps=train_steps, source=source, source_run=source_run,
                         init_from=init_from, noise_mean=noise_mean, noise_sigma=noise_sigma, train_config=cfg,
                         eval_attacks=split_list(eval_attacks), eval_eps=parse_eps(eval_eps), eval_n=eval_n, resume=resume,
                         overwrite=overwrite)
    emit([{k: r[k] for k in ("label", "eval_attack", "eps_label", "clean_accuracy", "robust_accuracy")} for r in records])


@app.command("defense-report")
@user_errors
def defense_report(
    runs: Annotated[str, typer.Option("--runs", help="Comma-separated defended run directories.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
) -> None:
    """Defense x attack table, bar chart and training curves from defended runs."""
    from medshield import api

    records = api.defense_report(split_list(runs), out)
    typer.echo((Path(out) / "defense.md").read_text())
    _ = records


@app.command()
@user_errors
def serve(
    run: Annotated[Path, typer.Option("--run", help="Run directory of the model to serve.")],
    defense: Annotated[str, typer.Option("--defense", help="Inference-time defense with optional parameters: none, rnd, "
                                         "rnd:nu=0.04, dnd:m=0.01:n=0.5.")] = "none",
    defense_param: Annotated[list[str] | None, typer.Option("--defense-param", hidden=True, help="Old form of a defense "
                                                            "parameter (KEY=VALUE, repeatable): use --defense rnd:nu=0.04.")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Attack-stream detector: none or stream.")] = "none",
    detector_threshold: Annotated[float | None, typer.Option("--detector-threshold", help="Near-duplicate distance threshold of the stream detector.")] = None,
    on_flag: Annotated[str, typer.Option("--on-flag", help="When the detector flags a key: block (403), throttle (429) or log.")] = "block",
    host: Annotated[str, typer.Option("--host", help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_keys: Annotated[Path | None, typer.Option("--api-keys", help="File of API keys, one per line (also $MEDSHIELD_API_KEYS, comma-separated).")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Total queries per key (a batch of N costs N).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Sustained queries per second per key.")] = None,
    burst: Annotated[float | None, typer.Option("--burst", help="Token-bucket size (default max(rate, max-batch)).")] = None,
    allow_scores: Annotated[bool, typer.Option("--allow-scores", help="Return class probabilities, not only labels.")] = False,
    audit_log: Annotated[Path | None, typer.Option("--audit-log", help="JSON-lines audit log of every query.")] = Path("medshield-audit.jsonl"),
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most images per request.")] = 256,
    max_request_mb: Annotated[float, typer.Option("--max-request-mb", help="Largest request body (MiB).")] = 8.0,
    workers: Annotated[int, typer.Option("--workers", help="uvicorn worker processes (limits are per worker).")] = 1,
    per_worker_limits: Annotated[bool, typer.Option("--per-worker-limits", help="Accept per-worker budgets with --workers > 1 and --state memory.")] = False,
    state: Annotated[str, typer.Option("--state", help="Where budgets, blocks, detector history and the audit log live: an SQLite file (shared by workers and restarts), redis://HOST:PORT or memory.")] = "medshield-state.db",
    trusted_proxies: Annotated[str | None, typer.Option("--trusted-proxies", help="Comma list of proxy addresses/networks whose X-Forwarded-For is believed (default: none).")] = None,
    seed: Seed = 0,
) -> None:
    """Serve a trained model over HTTP (POST /v1/predict, GET /v1/model, GET /v1/health, /docs)."""
    from medshield.server import service as api  # the server extra (fastapi, uvicorn): loaded only to serve

    spec = DefenseSpec.parse(":".join([defense, *(defense_param or [])]))
    api.serve(run, host=host, port=port, workers=workers, per_worker_limits=per_worker_limits, defense=spec,
              detector=detector,
              detector_threshold=detector_threshold, on_flag=on_flag,
              api_keys=api_keys, budget=budget, rate=rate, burst=burst, allow_scores=allow_scores,
              audit_log=audit_log, max_batch=max_batch, max_request_bytes=int(max_request_mb * (1 << 20)), seed=seed,
              state=state, trusted_proxies=trusted_proxies)


@app.command()
@user_errors
def blackbox(
    out: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")],
    run: Annotated[Path | None, typer.Option("--run", help="Run directory of the model to attack.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target card YAML, or the URL of a live `medshield serve` to attack instead.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key for --target (or $MEDSHIELD_API_KEY).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Queries per model call / HTTP request.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
    data_dir: DataDir = None,
    attack: Annotated[str, typer.Option("--attack", help="Comma list: hsja, gbba, qeba, cgba, rays (linf), "
                                        "surrogate (needs --surrogate), opt, sign_opt, boundary.")] = "hsja,gbba,opt",
    budgets: Annotated[str | None, typer.Option("--budgets", help="Comma list of query budgets per image "
                                                "(default 1000,5000,10000,15000,20000).")] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Correctly classified test images (seeded choice).")] = 50,
    defense: Annotated[str, typer.Option("--defense", help="Comma list of inference-time defenses with optional "
                                         "parameters: none,rnd:nu=0.05,dnd:m=0.01:n=0.5")] = "none",
    adaptive: Annotated[int, typer.Option("--adaptive", help="Adaptive attacker: repeat each query K times, "
                                          "majority label (budgets count all K).")] = 1,
    norm: Annotated[str, typer.Option("--norm", help="l2 or linf.")] = "l2",
    surrogate: Annotated[Path | None, typer.Option("--surrogate", help="The attacker's own run (substitute "
                                                   "model) for the surrogate attack.")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Decision-based black-box attacks at several query budgets; writes OUT/blackbox.json, plots, table."""
    from medshield import api

    if target and not target.startswith(("http://", "https://")):
        run, target = Path(refs(None if run is None else str(run), target)), None
    summary = api.blackbox(run, out, dataset=dataset, data_dir=data_dir, attacks=split_list(attack),
                           budgets=parse_budgets(budgets) if budgets else None, n_images=n_images,
                           defenses=[DefenseSpec.parse(d) for d in split_list(defense)], seed=seed, norm=Norm.parse(norm),
                           target=target, api_key=api_key, batch_size=batch_size, adaptive_k=adaptive, device=device,
                           surrogate=surrogate, overwrite=overwrite)
    emit([{k: r[k] for k in ("attack", "defense_spec", "adaptive_k", "budget", "mean_l2", "median_l2", "success_rate",
                             "defended_clean_accuracy")}
          for r in summary["records"]])


reproduce = typer.Typer(no_args_is_help=True, help="Reproduce published experiments beside their numbers.")
app.add_typer(reproduce, name="reproduce")


@reproduce.command("thesis")
@user_errors
def reproduce_thesis(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder holding pneumoniamnist.npz, breastmnist.npz and/or chest_xray/.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (models, campaigns, thesis.md; resumable).")] = Path("out/thesis"),
    preset: Annotated[str, typer.Option("--preset", help="quick (CPU minutes, 28x28 stand-ins), full (thesis scale, GPU) or tiny.")] = "quick",
    config: Annotated[Path | None, typer.Option("--config", help="Campaign YAML overriding the preset's sections.")] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel jobs.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
) -> None:
    """The thesis's experiment grid (chapters 3-6) on its datasets present under --data-dir, its published
    numbers beside ours: OUT/thesis.md, thesis.html, thesis.json."""
    from medshield import api

    res = api.reproduce_thesis(data_dir, out, preset=preset, workers=workers, executor=executor, address=address,
                               config=config)
    emit({"report": str(out / "thesis.html"), "markdown": str(out / "thesis.md"), "records": str(out / "thesis.json"),
          "datasets": [d["dataset"] for d in res["datasets"]], "skipped": res["skipped"]})


from medshield.cli_defense import register as _register_defense_commands  # noqa: E402
from medshield.cli_target import register as _register_target_commands  # noqa: E402

_register_defense_commands(app)
_register_target_commands(app)


def main() -> None:
    logging.basicConfig(level=os.environ.get("MEDSHIELD_LOG", "INFO"), format="%(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
