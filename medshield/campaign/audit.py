"""``medshield audit`` and ``medshield demo``: run a campaign, then render its report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from medshield.campaign.config import CampaignConfig, load_config
from medshield.campaign.runner import run_campaign
from medshield.evaluation.services import train
from medshield.evaluation.whitebox import GRID_EXAMPLES, load_grid_examples
from medshield.models.train import TrainConfig
from medshield.report.audit import make_figures, versions, write_report
from medshield.targets import ref_name


def audit(runs: list[str], out: str | Path, dataset: str | None = None, data_dir: str | Path | None = None,
          config: str | Path | CampaignConfig | None = None, command: str | None = None,
          overwrite: bool = False, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the campaign on ``runs`` and write ``OUT/report.html``, ``report.md``, ``report.pdf``,
    the PNG figures, ``audit.json`` (all results), ``findings.json``, ``campaign.yaml`` (the effective
    configuration) and ``timings.json``; returns the results. ``command`` is the command line that
    reproduces the audit (shown in the report's annex; by default a ``medshield audit`` line). A folder holding results of other inputs is refused
    (``overwrite=True`` recomputes those jobs)."""
    max_clean_drop = overrides.pop("max_clean_drop", None)
    cfg = config if isinstance(config, CampaignConfig) else load_config(config, **overrides)
    if isinstance(config, CampaignConfig) and overrides:
        cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if max_clean_drop is not None:
        cfg = cfg.model_copy(update={"calibration": cfg.calibration.model_validate(
            {**cfg.calibration.model_dump(), "max_clean_drop": max_clean_drop})})
    out = Path(out)
    data = str(data_dir) if data_dir is not None else None
    res = run_campaign(cfg, runs, out, dataset, data, overwrite=overwrite)
    figures = make_figures(res, out, runs, load_grid_examples(out / GRID_EXAMPLES))
    names = ", ".join(ref_name(r) for r in runs)
    clean = res["clean"] or (res.get("multilabel") or {}).get("clean") or []
    dataset_name = clean[0]["dataset"] if clean else (dataset or "")
    (out / "campaign.yaml").write_text(yaml.safe_dump(res["config"], sort_keys=False))
    if command is None:
        command = " ".join(["medshield audit --run", ",".join(runs), *(["--dataset", dataset] if dataset else []),
                            *(["--data-dir", data] if data else []), "--config", str(out / "campaign.yaml"),
                            "--out", str(out)])
    write_report(res, out, figures, cfg.title, meta=f"models: {names} · data: {dataset_name} ({cfg.split} split) · seed {cfg.seed}",
                 provenance={"command": command, "versions": versions()})
    return res


DEMO_CONFIG: dict[str, Any] = {
    "title": "MedShield demo audit (synthetic chest phantoms — not patient data)",
    "whitebox": {"attacks": ["fgsm", "bim", "pgd", "mifgsm"], "eps": ["1/255", "2/255", "4/255", "8/255"],
                 "n_images": 200},  # C&W (minutes per model on a CPU) is in the default audit, not the demo
    "transfer": {"n_images": 200},
    "blackbox": {"budgets": [500, 1000, 2000], "n_images": 6, "shard_size": 3},
    "detection": {"n_images": 3, "budget": 1000},
}


def demo_config(workers: int | None = None) -> CampaignConfig:
    cfg = CampaignConfig.model_validate(DEMO_CONFIG)
    return cfg.model_copy(update={"workers": workers or min(2, os.cpu_count() or 1)})


def demo(out: str | Path = "runs/demo", epochs: int = 5, seed: int = 0, workers: int | None = None,
         train_only: bool = False) -> dict[str, Any]:
    """Train two models on the built-in synthetic phantoms (``smallcnn`` with two seeds: each is the
    other's transfer target) and audit them; resumable (finished models and jobs are kept)."""
    out = Path(out)
    runs = []
    for name, model_seed in (("smallcnn", seed), ("smallcnn_seed1", seed + 1)):
        run = out / name
        if not (run / "metrics.json").is_file():
            resume = (run / "state").exists()
            train("demo", run, model="smallcnn", train_config=TrainConfig(epochs=epochs, seed=model_seed),
                  resume=resume, overwrite=not resume)
        runs.append(str(run))
    if train_only:
        return {"runs": runs}
    cfg = demo_config(workers).model_copy(update={"seed": seed})
    return audit(runs, out / "report", dataset="demo", config=cfg,
                 command=f"medshield demo --out {out} --epochs {epochs} --seed {seed}")
