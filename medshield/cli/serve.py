"""``medshield serve``: a trained model over HTTP behind keys, budgets, an optional defense and detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medshield.cli.common import CommandGroup, DataDir, MaxCleanDrop, Seed, alias, calibration_config, user_errors
from medshield.defenses.inference import DefenseSpec

group = CommandGroup("Serving")


@group.command()
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
    key_budget: Annotated[int | None, typer.Option("--key-budget", help="Total queries per API key (a batch of N costs N).")] = None,
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
    data_dir: DataDir = None,
    max_clean_drop: MaxCleanDrop = 0.01,
    seed: Seed = 0,
    budget_old: Annotated[int | None, typer.Option("--budget", hidden=True)] = None,
) -> None:
    """Serve a trained model over HTTP (POST /v1/predict, GET /v1/model, GET /v1/health, /docs). A defense
    without parameters (rnd, dnd) is calibrated to --max-clean-drop on the run's validation split first."""
    spec = DefenseSpec.parse(":".join([defense, *(defense_param or [])]))
    # the server extra (fastapi, uvicorn) is optional: loaded only when serving, so every other command
    # works without it
    from medshield.server import service

    service.serve(run, host=host, port=port, workers=workers, per_worker_limits=per_worker_limits, defense=spec,
                  detector=detector, detector_threshold=detector_threshold, on_flag=on_flag, api_keys=api_keys,
                  budget=alias(key_budget, budget_old), rate=rate, burst=burst, allow_scores=allow_scores,
                  audit_log=audit_log, max_batch=max_batch, max_request_bytes=int(max_request_mb * (1 << 20)),
                  seed=seed, state=state, trusted_proxies=trusted_proxies, data_dir=data_dir,
                  calibration=calibration_config(max_clean_drop, seed))
