"""``medshield target check|formats``: target cards (issue 14), registered on the main Typer app by
:mod:`medshield.cli`; argument parsing only.

No ``from __future__ import annotations`` here: Typer reads the option annotations at definition time."""

from pathlib import Path
from typing import Annotated

import typer

from medshield.errors import MedShieldError

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

    @group.command("formats")
    def formats() -> None:
        """List model formats and whether loading runs the model's own code."""
        from medshield.targets import SOURCE_INFO

        for name in sorted(SOURCE_INFO):
            info = SOURCE_INFO[name]
            code = " [runs the model's code]" if info["runs_model_code"] else ""
            typer.echo(f"{name}: {info['description']}{code}")
