"""``medshield audit | compare | demo | reproduce thesis``: campaigns and their reports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from medshield import api
from medshield.campaign.config import default_yaml
from medshield.cli.common import (CommandGroup, DataDir, FailOn, RunDataset, Seed, TargetOpt, check_level, emit, fail_if,
                                  headline, refs, user_errors)
from medshield.errors import MedShieldError
from medshield.report.compare import regressions, write_compare
from medshield.report.severity import RANK
from medshield.types import split_list

group = CommandGroup("Audit and reproduce")
reproduce = typer.Typer(no_args_is_help=True, help="Reproduce published experiments beside their numbers.")
group.add_typer(reproduce, "reproduce")


@group.command()
@user_errors
def audit(
    run: Annotated[str | None, typer.Option("--run", help="Run folder(s) to audit, comma-separated.")] = None,
    target: TargetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Report folder (resumable: re-run to continue).")] = Path("report"),
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    config: Annotated[Path | None, typer.Option("--config", help="Campaign YAML (see --print-config).")] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel jobs.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
    seed: Annotated[int | None, typer.Option(help="Campaign seed (overrides the config).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the default campaign YAML and exit.")] = False,
    fail_on: FailOn = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute jobs whose stored results came from other inputs.")] = False,
    max_clean_drop: Annotated[float | None, typer.Option("--max-clean-drop", help="Calibration tolerance for rnd/dnd "
                                                         "without parameters (overrides calibration.max_clean_drop; "
                                                         "0.01 = 1 point).")] = None,
) -> None:
    """One-command security audit: clean metrics, white-box, transfer, black-box with and without
    RND/DND, detection (and training defenses if the config asks); writes OUT/report.html, report.pdf,
    report.md, audit.json and findings.json.

    Exit status: 0 done, 2 bad input, 3 with --fail-on LEVEL when a finding at or above LEVEL exists."""
    check_level(fail_on)
    if print_config:
        typer.echo(default_yaml())
        return
    models = refs(run, target, "--run RUN (a folder written by medshield train) or --target CARD")
    res = api.audit(split_list(models), out, dataset=dataset, data_dir=data_dir,
                    config=config, executor=executor, workers=workers, address=address, seed=seed,
                    overwrite=overwrite, max_clean_drop=max_clean_drop)
    found = json.loads((out / "findings.json").read_text())
    emit({"report": str(out / "report.html"), "pdf": str(out / "report.pdf"), "markdown": str(out / "report.md"),
          "records": str(out / "audit.json"), "overall": found["overall"],
          "clean": [{"run": r["run"], **headline(r)} for r in res["clean"]]})
    if fail_on:
        bad = [f for f in found["findings"] if RANK[f["severity"]] >= RANK[fail_on]]
        fail_if(bad, lambda: f"fail-on {fail_on}: {len(bad)} finding(s) at or above {fail_on}, worst: "
                             f"{bad[0]['title']} on {bad[0]['model']} ({bad[0]['severity']})")


@group.command()
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
        fail_if(bad, lambda: f"fail-on {fail_on}: {len(bad)} threat(s) got worse to {fail_on} or above, e.g. "
                             f"{bad[0]['title']} ({bad[0]['key']})")


@group.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (models and report; resumable).")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs of the smallcnn (the resnet18 gets half).")] = 5,
    workers: Annotated[int | None, typer.Option(help="Parallel audit jobs (default: up to 2).")] = None,
    train_only: Annotated[bool, typer.Option("--train-only", help="Train the demo models, skip the audit.")] = False,
    seed: Seed = 0,
) -> None:
    """Train on the built-in synthetic chest phantoms and audit the models (offline; minutes on 2 CPU cores)."""
    start = time.perf_counter()
    res = api.demo(out, epochs=epochs, seed=seed, workers=workers, train_only=train_only)
    if train_only:
        emit(res)
        return
    emit({"report": str(out / "report" / "report.html"), "pdf": str(out / "report" / "report.pdf"),
          "markdown": str(out / "report" / "report.md"),
          "clean": [{"run": r["run"], **headline(r)} for r in res["clean"]],
          "wall_seconds": round(time.perf_counter() - start, 1)})


@reproduce.command("thesis")
@user_errors
def reproduce_thesis(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder holding pneumoniamnist.npz, breastmnist.npz, chest_xray/ and/or COVID-CT/.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (models, campaigns, thesis.md; resumable).")] = Path("out/thesis"),
    preset: Annotated[str, typer.Option("--preset", help="quick (CPU minutes, 28x28 stand-ins), mid (the real sets at 64x64, CPU, ~50 min), full (thesis scale, GPU) or tiny.")] = "quick",
    config: Annotated[Path | None, typer.Option("--config", help="Campaign YAML overriding the preset's sections.")] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel jobs.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --executor ray.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain models and recompute jobs that OUT holds from "
                                            "other settings (refused otherwise, with the difference named).")] = False,
) -> None:
    """The thesis's experiment grid (chapters 3-6) on its datasets present under --data-dir, its published
    numbers beside ours: OUT/thesis.md, thesis.html, thesis.json."""
    res = api.reproduce_thesis(data_dir, out, preset=preset, workers=workers, executor=executor, address=address,
                               config=config, overwrite=overwrite)
    emit({"report": str(out / "thesis.html"), "markdown": str(out / "thesis.md"), "records": str(out / "thesis.json"),
          "datasets": [d["dataset"] for d in res["datasets"]], "skipped": res["skipped"]})
