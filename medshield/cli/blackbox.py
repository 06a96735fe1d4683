"""``medshield blackbox``: decision-based (label-only) attacks on a run, a target card or a live service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshield import api
from medshield.cli.common import (CommandGroup, DataDir, Device, MaxCleanDrop, Out, Overwrite, RunDataset, Seed, alias,
                                  calibration_config, emit, refs, user_errors)
from medshield.defenses.inference import DefenseSpec
from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import BlackboxConfig
from medshield.models.inference import LAYOUTS
from medshield.types import Norm, parse_budgets, split_list

DEFAULT_ATTACKS = ",".join(BlackboxConfig.attacks)

group = CommandGroup("Black-box attacks")


@group.command()
@user_errors
def blackbox(
    out: Out,
    run: Annotated[Path | None, typer.Option("--run", help="Run directory of the model to attack.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target card YAML, or the URL of a live `medshield serve` to attack instead.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key for --target (or $MEDSHIELD_API_KEY).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Queries per model call / HTTP request.")] = None,
    dataset: RunDataset = None,
    data_dir: DataDir = None,
    attacks: Annotated[str, typer.Option("--attacks", help="Comma list: hsja, gbba, qeba, cgba, rays (linf), "
                                         "surrogate (needs --surrogate), opt, sign_opt, boundary.")] = DEFAULT_ATTACKS,
    budgets: Annotated[str | None, typer.Option("--budgets", help="Comma list of query budgets per image "
                                                "(default 1000,5000,10000,15000,20000).")] = None,
    n_images: Annotated[int, typer.Option("--n-images", help="Correctly classified test images (seeded choice).")] = 50,
    defenses: Annotated[str, typer.Option("--defenses", help="Comma list of inference-time defenses with optional "
                                          "parameters: none,rnd:nu=0.05,dnd:m=0.01:n=0.5")] = "none",
    adaptive: Annotated[int, typer.Option("--adaptive", help="Adaptive attacker against randomised defenses: "
                                          "repeat each query K times, majority label (budgets count all K); a "
                                          "deterministic model is attacked with every query.")] = 1,
    norm: Annotated[str, typer.Option("--norm", help="l2 or linf.")] = "l2",
    surrogate: Annotated[Path | None, typer.Option("--surrogate", help="The attacker's own run (substitute "
                                                   "model) for the surrogate attack.")] = None,
    layout: Annotated[str, typer.Option("--layout", help="Forward path of a local model: contiguous (records "
                                        "reproduce bit for bit), auto (measured: channels-last where faster; "
                                        "logits differ in the last bit), channels_last, or frozen (a frozen "
                                        "inference graph, batch norm folded: faster on CPU; its labels can "
                                        "differ from the model's at boundary points, records use it "
                                        "throughout).")] = "contiguous",
    device: Device = "cpu",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    max_clean_drop: MaxCleanDrop = 0.01,
    attack_old: Annotated[str | None, typer.Option("--attack", hidden=True)] = None,
    defense_old: Annotated[str | None, typer.Option("--defense", hidden=True)] = None,
) -> None:
    """Decision-based black-box attacks at several query budgets; writes OUT/blackbox.json, plots, table.
    rnd/dnd without parameters are calibrated to --max-clean-drop on the validation split."""
    if layout not in LAYOUTS:
        raise MedShieldError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    specs = [DefenseSpec.parse(d) for d in split_list(alias(defenses, defense_old, "none"))]
    budget_list = parse_budgets(budgets) if budgets else None
    if target and not target.startswith(("http://", "https://")):
        run, target = Path(refs(run, target)), None
    summary = api.blackbox(run, out, dataset=dataset, data_dir=data_dir,
                           attacks=split_list(alias(attacks, attack_old, DEFAULT_ATTACKS)), budgets=budget_list,
                           n_images=n_images, defenses=specs, seed=seed, norm=Norm.parse(norm), target=target,
                           api_key=api_key, batch_size=batch_size, adaptive_k=adaptive, device=device,
                           surrogate=surrogate, overwrite=overwrite,
                           calibration=calibration_config(max_clean_drop, seed), layout=layout)
    emit([{k: r[k] for k in ("attack", "defense_spec", "adaptive_k", "budget", "mean_l2", "median_l2", "success_rate",
                             "defended_clean_accuracy")}
          for r in summary["records"]])
