"""``medshield detect`` and ``medshield defense-tradeoff``: the black-box defense commands (issue 6),
registered on the main Typer app by :mod:`medshield.cli`; argument parsing only.

No ``from __future__ import annotations`` here: Typer reads the option annotations at definition time,
and the shared ones (``DataDir``, ``Seed``) are imported inside :func:`register`."""

from pathlib import Path
from typing import Annotated

import typer

from medshield.cli_target import TargetOpt, refs


def register(app: typer.Typer) -> None:
    """Add the black-box defense commands to ``app``."""
    from medshield.cli import DataDir, Seed, emit, user_errors
    from medshield.types import parse_floats, split_list

    @app.command()
    @user_errors
    def detect(
        out: Annotated[Path, typer.Option("--out", help="Output folder.")],
        run: Annotated[str | None, typer.Option("--run", help="Run directory of the model to attack.")] = None,
        target: TargetOpt = None,
        dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
        data_dir: DataDir = None,
        attack: Annotated[str, typer.Option("--attack", help="Comma list of attacks whose streams to detect.")] = "hsja,gbba,opt",
        n_images: Annotated[int | None, typer.Option("--n-images", help="Attacked test images per attack.")] = None,
        budget: Annotated[int | None, typer.Option("--budget", help="Queries per attacked image.")] = None,
        within: Annotated[int | None, typer.Option("--within", help="Report streams flagged within this many queries.")] = None,
        k: Annotated[int | None, typer.Option("--k", help="Detector: nearest neighbours averaged.")] = None,
        feature_size: Annotated[int | None, typer.Option("--feature-size", help="Detector: pooled image side.")] = None,
        flag_after: Annotated[int | None, typer.Option("--flag-after", help="Detector: suspicious queries before flagging.")] = None,
        fpr: Annotated[float | None, typer.Option("--fpr", help="Per-query false-positive rate for the threshold (train images).")] = None,
        n_streams: Annotated[int | None, typer.Option("--n-streams", help="Benign client streams per kind.")] = None,
        seed: Seed = 0,
    ) -> None:
        """Stream detection: when attack query streams get flagged, and false positives on benign streams."""
        from medshield import api

        summary = api.detect(refs(run, target), out, dataset=dataset, data_dir=data_dir, attacks=tuple(split_list(attack)),
                             n_images=n_images, budget=budget, within=within, k=k, feature_size=feature_size,
                             flag_after=flag_after, fpr=fpr, n_streams=n_streams, seed=seed)
        emit([{key: r[key] for key in ("kind", "n_streams", "flagged_fraction", "flagged_at_median", "flagged_at_max")}
              for r in summary["records"]])

    @app.command("defense-tradeoff")
    @user_errors
    def defense_tradeoff(
        out: Annotated[Path, typer.Option("--out", help="Output folder.")],
        run: Annotated[str | None, typer.Option("--run", help="Run directory of the model.")] = None,
        target: TargetOpt = None,
        dataset: Annotated[str | None, typer.Option("--dataset", help="Defaults to the run's dataset.")] = None,
        data_dir: DataDir = None,
        nu: Annotated[str, typer.Option("--nu", help="RND noise levels.")] = "0,0.01,0.02,0.03,0.04,0.05,0.075,0.1,0.15,0.2",
        m: Annotated[str, typer.Option("--m", help="DND query-noise levels (n fixed at --n-fixed).")] = "0,0.01,0.02,0.03,0.04,0.05,0.075,0.1,0.15,0.2",
        n: Annotated[str, typer.Option("--n", help="DND score-noise levels (m fixed at --m-fixed).")] = "0,0.25,0.5,0.75,1,1.5,2,3",
        n_fixed: Annotated[float, typer.Option("--n-fixed", help="DND n during the m sweep.")] = 0.5,
        m_fixed: Annotated[float, typer.Option("--m-fixed", help="DND m during the n sweep.")] = 0.01,
        max_drop: Annotated[float, typer.Option("--max-drop", help="Accepted clean-accuracy drop (0.02 = 2 points).")] = 0.02,
        repeats: Annotated[int, typer.Option("--repeats", help="Noisy passes over the split per setting.")] = 3,
        split: Annotated[str, typer.Option("--split", help="Split to measure on.")] = "test",
        seed: Seed = 0,
    ) -> None:
        """Clean accuracy and flip rate vs noise level for RND and DND; writes OUT/tradeoff.json/.md/.png."""
        from medshield import api

        summary = api.defense_tradeoff(refs(run, target), out, dataset=dataset, data_dir=data_dir, nu_grid=list(parse_floats(nu, "--nu")),
                                       m_grid=list(parse_floats(m, "--m")), n_grid=list(parse_floats(n, "--n")), n_fixed=n_fixed,
                                       m_fixed=m_fixed, max_drop=max_drop, repeats=repeats, split=split, seed=seed)
        emit({"undefended_accuracy": summary["undefended_accuracy"], "chosen": summary["chosen"]})
