"""``medshield target check|formats``: target cards (issue 14), registered on the main Typer app by
:mod:`medshield.cli`; argument parsing only.

No ``from __future__ import annotations`` here: Typer reads the option annotations at definition time."""

from pathlib import Path
from typing import Annotated

import typer

from medshield.errors import MedShieldError
from medshield.types import parse_budgets, parse_eps, split_list

TargetOpt = Annotated[str | None, typer.Option("--target", help="Target card YAML (see `medshield target check`); "
                                               "comma-separated for several.")]


def refs(run: str | None, target: str | None, what: str = "--run RUN or --target CARD") -> str:
    """``--run`` and ``--target`` together as one comma-separated list of model references."""
    items = [v for v in (run, target) if v]
    if not items:
        raise MedShieldError(f"give the model to test: {what}")
    return ",".join(str(v) for v in items)


def register(app: typer.Typer) -> None:
    """Add the ``target`` command group to ``app``."""
    from medshield.cli import DataDir, emit, user_errors

    group = typer.Typer(no_args_is_help=True, help="Target cards: describe any classifier (TorchScript, ONNX, "
                        "Python, MONAI bundle, MedShield run, endpoints) for every command's --target.")
    app.add_typer(group, name="target")

    @group.command("check")
    @user_errors
    def check(
        card: Annotated[Path, typer.Argument(help="Target card YAML (or a MedShield run folder).")],
        dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset name (pneumoniamnist, folder, ...) or a .csv manifest.")] = None,
        data_dir: DataDir = None,
        manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV manifest: path,label[,patient_id][,split] or one column per finding.")] = None,
        split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
        n: Annotated[int | None, typer.Option("--n", help="Use the first n images of the split (default all).")] = None,
        device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: the card's).")] = None,
    ) -> None:
        """Load a card, run the data through it; prints one JSON object (shapes, output range, test.accuracy,
        gradients, deterministic)."""
        from medshield import api

        emit(api.target_check(card, dataset=dataset, data_dir=data_dir, manifest=manifest, split=split, n=n,
                              device=device))

    @group.command("findings")
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
        device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: the card's).")] = None,
    ) -> None:
        """Multi-label targets: per-finding AUC/sensitivity/specificity, and attacks that hide or add one
        finding while the others stay unchanged; writes OUT/findings.json."""
        from medshield import api

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

    @group.command("formats")
    def formats() -> None:
        """List model formats and whether loading runs the model's own code."""
        from medshield.targets import SOURCE_INFO

        for name in sorted(SOURCE_INFO):
            info = SOURCE_INFO[name]
            code = " [runs the model's code]" if info["runs_model_code"] else ""
            typer.echo(f"{name}: {info['description']}{code}")
