"""``medshield target check | findings | formats``: target cards (issue 14): describe any classifier
(TorchScript, ONNX, Python, MONAI bundle, MedShield run, endpoints) for every command's ``--target``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshield import api
from medshield.cli.common import CommandGroup, DataDir, Split, alias, emit, user_errors
from medshield.errors import MedShieldError
from medshield.targets import SOURCE_INFO
from medshield.types import parse_budgets, parse_eps, split_list

CardDevice = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: the card's).")]

group = CommandGroup("Target cards")
target = typer.Typer(no_args_is_help=True, help="Target cards: describe any classifier (TorchScript, ONNX, "
                     "Python, MONAI bundle, MedShield run, endpoints) for every command's --target.")
group.add_typer(target, "target")


@target.command("check")
@user_errors
def check(
    card: Annotated[Path, typer.Argument(help="Target card YAML (or a MedShield run folder).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name (pneumoniamnist, folder, ...) or a .csv manifest.")] = None,
    data_dir: DataDir = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV manifest: path,label[,patient_id][,split] or one column per finding.")] = None,
    split: Split = "test",
    n_images: Annotated[int | None, typer.Option("--n-images", help="Use the first n images of the split (default all).")] = None,
    device: CardDevice = None,
    n_old: Annotated[int | None, typer.Option("--n", hidden=True)] = None,
) -> None:
    """Load a card, run the data through it; prints one JSON object (shapes, output range, test.accuracy,
    gradients, deterministic)."""
    emit(api.target_check(card, dataset=dataset, data_dir=data_dir, manifest=manifest, split=split,
                          n=alias(n_images, n_old), device=device))


@target.command("findings")
@user_errors
def findings(
    card: Annotated[Path, typer.Argument(help="A multi-label target card YAML.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (findings.json).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name or a .csv manifest with one 0/1 column per finding.")] = None,
    data_dir: DataDir = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV manifest with one 0/1 column per finding.")] = None,
    eps: Annotated[str, typer.Option(help="White-box L-inf budgets, comma-separated (8/255 style).")] = "2/255,4/255,8/255",
    budgets: Annotated[str, typer.Option(help="Label-only query budgets, comma-separated.")] = "500,1000",
    n_images: Annotated[int, typer.Option("--n-images", help="Images attacked (the clean metrics use the whole split).")] = 50,
    modes: Annotated[str, typer.Option(help="hide, add or hide,add.")] = "hide,add",
    label_only: Annotated[bool, typer.Option("--label-only/--no-label-only", help="Also run label-only (HSJA) attacks.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the image choice and the attacks.")] = 0,
    device: CardDevice = None,
) -> None:
    """Multi-label targets: per-finding AUC/sensitivity/specificity, and attacks that hide or add one
    finding while the others stay unchanged; writes OUT/findings.json."""
    budget_list = parse_budgets(budgets)
    mode_list = tuple(split_list(modes))
    if not mode_list or any(m not in ("hide", "add") for m in mode_list):
        raise MedShieldError(f"--modes must be hide, add or hide,add; got {modes!r}")
    summary = api.findings(card, out, dataset=dataset, data_dir=data_dir, manifest=manifest, n_images=n_images,
                           eps=parse_eps(eps), budgets=budget_list, modes=mode_list, label_only=label_only, seed=seed,
                           device=device)
    emit({"clean": {n: {k: f[k] for k in ("auc", "sensitivity", "specificity")}
                    for n, f in summary["clean"]["findings"].items()},
          "whitebox": [{k: r[k] for k in ("finding", "mode", "eps", "success_rate", "others_unchanged_rate")}
                       for r in summary["whitebox"]],
          "out": str(out)})


@target.command("formats")
def formats() -> None:
    """List model formats and whether loading runs the model's own code."""
    for name in sorted(SOURCE_INFO):
        info = SOURCE_INFO[name]
        code = " [runs the model's code]" if info["runs_model_code"] else ""
        typer.echo(f"{name}: {info['description']}{code}")
