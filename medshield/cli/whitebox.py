"""``medshield attack | transfer``: white-box attacks and transferability (issue 3)."""

from __future__ import annotations

from typing import Annotated

import typer

from medshield import api
from medshield.cli.common import (CommandGroup, DataDir, Device, NImages, Out, Overwrite, RunDataset, Seed, Split,
                                  TargetOpt, alias, emit, refs, user_errors)
from medshield.attacks import ATTACKS
from medshield.errors import MedShieldError
from medshield.evaluation.whitebox import WHITEBOX_ATTACKS
from medshield.types import EPS, EPS_GRID, Norm, eps_label, parse_eps, parse_eps_value, split_list

DEFAULT_ATTACKS = ",".join(WHITEBOX_ATTACKS)

group = CommandGroup("White-box attacks")


@group.command()
@user_errors
def attack(
    out: Out,
    run: Annotated[str | None, typer.Option("--run", help="Run folder; several comma-separated runs (e.g. grey,RGB) are compared side by side.")] = None,
    target: TargetOpt = None,
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    attacks: Annotated[str, typer.Option("--attacks", help=f"Comma-separated, of: {', '.join(ATTACKS.names())} "
                                         "(autoattack: the ensemble, worst case over its members).")] = DEFAULT_ATTACKS,
    eps: Annotated[str, typer.Option("--eps", help="Comma-separated budgets; fractions like 2/255 allowed.")] = ",".join(map(eps_label, EPS_GRID)),
    norm: Annotated[str, typer.Option("--norm", help="linf or l2.")] = "linf",
    split: Split = "test",
    n_images: NImages = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 128,
    direction: Annotated[str, typer.Option(help="both, disease_to_normal (missed diagnosis) or normal_to_disease (fraud).")] = "both",
    steps: Annotated[int | None, typer.Option(help="Iterations of the iterative attacks (default: each attack's own).")] = None,
    square_queries: Annotated[int | None, typer.Option("--square-queries", help="Square's query budget per image, in `autoattack` and `square` (default: 5000, AutoAttack's standard version).")] = None,
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    attack_old: Annotated[str | None, typer.Option("--attack", hidden=True)] = None,
    n_old: Annotated[int | None, typer.Option("--n", hidden=True)] = None,
) -> None:
    """White-box attacks x eps; writes OUT/whitebox.json, whitebox.md, robust_vs_eps.png, grid.png."""
    names = split_list(alias(attacks, attack_old, DEFAULT_ATTACKS))
    kwargs = attack_kwargs(names, steps, square_queries)
    records = api.attack(split_list(refs(run, target)), out, dataset=dataset, data_dir=data_dir, attacks=names,
                         eps=parse_eps(eps, norm), norm=Norm.parse(norm), split=split, n=alias(n_images, n_old),
                         batch_size=batch_size, seed=seed, direction=direction, attack_kwargs=kwargs, device=device,
                         overwrite=overwrite)
    keys = ("run", "attack", "eps_label", "clean_accuracy", "robust_accuracy", "success_rate")
    emit({"records": [{k: r[k] for k in keys} for r in records], "out": str(out)})


def attack_kwargs(names: list[str], steps: int | None, square_queries: int | None) -> dict[str, dict[str, int]] | None:
    """Per-attack constructor options from ``--steps`` and ``--square-queries`` (Square counts its queries
    as ``steps``; in AutoAttack they are ``square_queries``)."""
    kwargs: dict[str, dict[str, int]] = {a: {"steps": steps} for a in names if a != "fgsm"} if steps else {}
    if square_queries is not None:
        if square_queries < 1:
            raise MedShieldError(f"--square-queries must be >= 1, got {square_queries}")
        if not {"autoattack", "square"} & set(names):
            raise MedShieldError("--square-queries needs autoattack or square in --attacks")
        for name, key in (("autoattack", "square_queries"), ("square", "steps")):
            if name in names:
                kwargs.setdefault(name, {})[key] = square_queries
    return kwargs or None


@group.command()
@user_errors
def transfer(
    out: Out,
    run: Annotated[str | None, typer.Option("--run", help="Comma-separated run folders: each is a source and a target.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target cards (comma-separated) joining the runs; one without gradients is a transfer target only.")] = None,
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    attack_name: Annotated[str, typer.Option("--attack", help="Attack used on each source.")] = "mifgsm",
    eps: Annotated[str, typer.Option("--eps", help="Budget, e.g. 2/255.")] = eps_label(EPS),
    norm: Annotated[str, typer.Option("--norm", help="linf or l2.")] = "linf",
    split: Split = "test",
    n_images: NImages = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 128,
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    source_old: Annotated[str | None, typer.Option("--source", hidden=True)] = None,
    n_old: Annotated[int | None, typer.Option("--n", hidden=True)] = None,
) -> None:
    """Transfer matrix: adversarials made on each source, accuracy of every target; writes OUT/transfer.json."""
    models = refs(alias(run, source_old), target, "--run RUNS and/or --target CARDS")
    records = api.transfer(split_list(models), out, dataset=dataset, data_dir=data_dir, attack_name=attack_name,
                           eps=parse_eps_value(eps, norm), norm=Norm.parse(norm), split=split,
                           n=alias(n_images, n_old), batch_size=batch_size, seed=seed, device=device, overwrite=overwrite)
    emit({"matrix": [{k: r[k] for k in ("source", "target", "robust_accuracy")} for r in records], "out": str(out)})
