"""Plan an audit campaign as independent jobs, run them on any executor, assemble the results.

Jobs are (model x attack) for white-box, (source) for transfer, (model x attack x defense x image
shard) for black-box, plus clean metrics, defended clean metrics, detection and training defenses.
Finished jobs live in ``OUT/jobs.json`` (a :class:`RecordStore`): kill the campaign, run it again
and it continues where it stopped. ``OUT/audit.json`` holds every result and no wall-clock time,
so the same config and seed give a byte-identical file whichever executor ran it, interrupted or
not; times go to ``OUT/timings.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from medshield.attacks import ATTACKS, create_attack
from medshield.attacks.decision import DECISION_ATTACKS, model_label_fn
from medshield.campaign.config import CampaignConfig
from medshield.campaign.identity import with_identity
from medshield.campaign.jobs import _load, _load_target, calibration_job, split_timings
from medshield.defenses.inference import DefenseSpec
from medshield.defenses.training import TRAINING_DEFENSES
from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import STARTS, BlackboxConfig, select_images, summarise
from medshield.evaluation.calibration import calibration_summary, needs_calibration
from medshield.evaluation.executor import Job, run_jobs
from medshield.evaluation.store import RecordStore
from medshield.evaluation.whitebox import GRID_EXAMPLES, grid_choice, save_grid_examples, worst_case
from medshield.models.checkpoint import write_json
from medshield.report.schema import SCHEMA_VERSION
from medshield.targets import GRADIENTS_UNAVAILABLE, load_card, ref_name

log = logging.getLogger(__name__)

JOBS = "medshield.campaign.jobs"
SELECTION_BATCH = 64
"""Rows per forward call when the black-box images are chosen (one pass over the split, in the driver)."""


def _name(run: str) -> str:
    return ref_name(run)


def is_run(ref: str) -> bool:
    """A MedShield run folder (trainable, fine-tunable), as opposed to a target card."""
    return (Path(ref) / "config.json").is_file()


def has_gradients(ref: str, base: dict[str, Any]) -> bool:
    """Whether white-box attacks can run on ``ref`` (loads it once per process)."""
    target, _ = _load_target(ref, base["dataset"], base["data_dir"], base.get("device", "cpu"))
    if not target.gradients:
        log.warning("%s: %s", target.name, GRADIENTS_UNAVAILABLE)
    return target.gradients


def is_multilabel(ref: str) -> bool:
    """A target card whose output is one sigmoid per finding (``output.task: multilabel``)."""
    return Path(ref).is_file() and load_card(ref).output.task == "multilabel"


def covers(names: list[str] | None, run: str) -> bool:
    """Whether a section limited to ``names`` (run folder names; None = all) covers ``run``."""
    return names is None or _name(run) in names


def validate(cfg: CampaignConfig) -> None:
    """Fail fast on unknown attack/defense names (with did-you-mean) before any work starts."""
    for name in cfg.whitebox.attacks + [cfg.transfer.attack, cfg.defenses.train_attack,
                                        *cfg.defenses.train_attacks.values()] + cfg.defenses.eval_attacks:
        ATTACKS.get(name)
    for name, options in cfg.whitebox.attack_options.items():
        try:
            create_attack(name, norm=cfg.whitebox.norm, **options)
        except (TypeError, ValueError) as exc:
            raise MedShieldError(f"bad whitebox.attack_options for {name!r}: {exc}") from exc
    for name in cfg.blackbox.attacks + (cfg.blackbox.defended_attacks or []) + cfg.detection.attacks + \
            [cfg.multilabel.label_only_attack]:
        DECISION_ATTACKS.get(name)
    for name in cfg.defenses.defenses:
        TRAINING_DEFENSES.get(name)


def calibration_jobs(cfg: CampaignConfig, runs: list[str], dataset: str | None, data_dir: str | None) -> list[Job]:
    """One job per (model, black-box defense given without its noise parameters): the calibration the
    black-box jobs of that defense are planned from (see :mod:`medshield.evaluation.calibration`)."""
    settings = cfg.calibration.settings(cfg.seed)
    if settings is None or not cfg.blackbox.enabled:
        return []
    key = json.dumps(settings.to_dict(), sort_keys=True, separators=(",", ":"))
    return [Job(f"calibration|{_name(run)}|{spec}|{key}", f"{JOBS}:calibration_job",
                {"run": run, "dataset": dataset, "data_dir": data_dir, "defense": spec, "settings": settings.to_dict(),
                 **_device(cfg)})
            for run in runs if covers(cfg.blackbox.runs, run) and not is_multilabel(run)
            for spec in cfg.blackbox.defenses if needs_calibration(spec.name, spec.explicit)]


def plan(cfg: CampaignConfig, runs: list[str], dataset: str | None, data_dir: str | None, out: Path,
         calibrations: list[dict[str, Any]] | None = None) -> list[Job]:
    """Every job of the campaign, in a stable order with stable keys: the calibrations first, then the
    rest with calibrated defenses resolved to their chosen setting (``calibrations`` are the
    calibration jobs' outputs when already run; otherwise they are computed here)."""
    base = {"dataset": dataset, "data_dir": data_dir, "split": cfg.split, "seed": cfg.seed, **_device(cfg)}
    multi = [r for r in runs if is_multilabel(r)]
    runs = [r for r in runs if r not in multi]
    jobs: list[Job] = calibration_jobs(cfg, runs, dataset, data_dir)
    if calibrations is None:
        calibrations = [calibration_job(**j.kwargs) for j in jobs]
    resolved = {(rec["run"], rec["spec"]): DefenseSpec.parse(rec["resolved"]) for rec in calibrations}
    for run in multi:
        jobs += _multilabel_jobs(cfg, run, base)
    for run in runs:
        if cfg.clean.enabled:
            jobs.append(Job(f"clean|{_name(run)}", f"{JOBS}:clean_job", {"run": run, **base, "bootstrap": cfg.clean.bootstrap}))
        if cfg.whitebox.enabled and has_gradients(run, base):
            wb = cfg.whitebox
            grid_attack, grid_eps = grid_choice(wb.attacks, wb.eps)
            for attack in wb.attacks:
                grid = {"grid_eps": grid_eps, "grid_images": wb.grid_images} if attack == grid_attack else {}
                jobs.append(Job(f"whitebox|{_name(run)}|{attack}", f"{JOBS}:whitebox_job",
                                {"run": run, **base, "attack": attack, "eps": list(wb.eps), "norm": str(wb.norm),
                                 "n_images": wb.n_images, "batch_size": wb.batch_size,
                                 **_attack_options(wb.attack_options.get(attack), wb.eot_samples), **grid}))
    jobs += _transfer_jobs(cfg, runs, base)
    if cfg.blackbox.enabled or cfg.detection.enabled:
        for run in runs:
            jobs += _blackbox_jobs(cfg, run, base, resolved)
    if cfg.defenses.enabled:
        jobs += _training_defense_jobs(cfg, runs, base, out)
    return with_identity(jobs)


def _multilabel_jobs(cfg: CampaignConfig, run: str, base: dict[str, Any]) -> list[Job]:
    """Per-finding jobs of a multi-label target: clean metrics, white-box hide/add one finding (one job
    per attacked finding), a label-only attack on one finding's decision."""
    ml, name = cfg.multilabel, _name(run)
    target, _ = _load_target(run, base["dataset"], base["data_dir"], base.get("device", "cpu"))
    names = target.class_names
    attacked = ml.findings or target.positive_names or names
    unknown = [f for f in attacked + (ml.label_only_findings or []) if f not in names]
    if unknown:
        raise MedShieldError(f"multilabel findings {unknown} are not among {target.name}'s findings "
                             f"({', '.join(names)})")
    jobs = [Job(f"mlclean|{name}", f"{JOBS}:multilabel_clean_job",
                {"run": run, **base, "bootstrap": cfg.clean.bootstrap})]
    if cfg.whitebox.enabled and has_gradients(run, base):
        jobs += [Job(f"mlwhitebox|{name}|{f}", f"{JOBS}:multilabel_whitebox_job",
                     {"run": run, **base, "finding": f, "eps": list(cfg.whitebox.eps), "modes": ml.modes,
                      "steps": ml.steps, "n_images": cfg.whitebox.n_images}) for f in attacked]
    if cfg.blackbox.enabled:
        jobs += [Job(f"mlblackbox|{name}|{f}", f"{JOBS}:multilabel_label_only_job",
                     {"run": run, **base, "finding": f, "attack": ml.label_only_attack, "budgets": cfg.blackbox.budgets,
                      "modes": ml.label_only_modes, "n_images": cfg.blackbox.n_images})
                 for f in (ml.label_only_findings or attacked[:1])]
    return jobs


def _attack_options(options: dict[str, Any] | None, eot_samples: int) -> dict[str, Any]:
    """Extra white-box job arguments, absent when they are the defaults (older jobs keep their arguments)."""
    out: dict[str, Any] = {"attack_kwargs": options} if options else {}
    return out | ({"eot_samples": eot_samples} if eot_samples != 16 else {})


def _device(cfg: CampaignConfig) -> dict[str, str]:
    """The jobs' ``device`` argument: absent for the CPU, so CPU campaigns keep their job arguments."""
    return {} if cfg.device == "cpu" else {"device": cfg.device}


def _transfer_jobs(cfg: CampaignConfig, runs: list[str], base: dict[str, Any]) -> list[Job]:
    models = [m for m in dict.fromkeys(runs + cfg.transfer.models) if not is_multilabel(m)]
    if not cfg.transfer.enabled or len(models) < 2:
        return []
    eps = cfg.transfer.eps
    return [Job(f"transfer|{_name(src)}|{cfg.transfer.attack}|{eps:.8g}", f"{JOBS}:transfer_job",
                {"source": src, "targets": models, **base, "attack": cfg.transfer.attack, "eps": eps, "norm": "linf",
                 "n_images": cfg.transfer.n_images}) for src in models if has_gradients(src, base)]


def blackbox_indices(cfg: CampaignConfig, run: str, base: dict[str, Any], n: int) -> list[int]:
    """``n`` correctly classified test images, the same for every attack and defense of a model."""
    model, ds = _load(run, base["dataset"], base["data_dir"], base.get("device", "cpu"))
    # one pass over the split: a fixed batch, not a throughput sweep that would cost more than the pass
    labels = model_label_fn(model, batch_size=SELECTION_BATCH, layout="contiguous")
    return select_images(labels, ds.split(cfg.split), n, cfg.seed).tolist()


def _blackbox_jobs(cfg: CampaignConfig, run: str, base: dict[str, Any],
                   resolved: dict[tuple[str, str], DefenseSpec] | None = None) -> list[Job]:
    bb, jobs = cfg.blackbox, []
    if bb.enabled and covers(bb.runs, run):
        idx = blackbox_indices(cfg, run, base, bb.n_images)
        shards = [idx[i:i + bb.shard_size] for i in range(0, len(idx), bb.shard_size)]
        for requested in bb.defenses:
            defense = (resolved or {}).get((_name(run), str(requested)), requested)
            jobs.append(Job(f"defended_clean|{_name(run)}|{defense}", f"{JOBS}:defended_clean_job",
                            {"run": run, **base, "defense": defense}))
            attacks = bb.attacks if bb.defended_attacks is None or defense.is_none \
                else [a for a in bb.attacks if a in bb.defended_attacks]
            for attack in attacks:
                for k, shard in enumerate(shards):
                    adaptive = {"adaptive_k": bb.adaptive_k} if bb.adaptive_k > 1 and not defense.is_none else {}
                    tag = (f"|k{bb.adaptive_k}" if adaptive else "") + ("|img" if bb.per_image else "")
                    jobs.append(Job(f"blackbox|{_name(run)}|{attack}|{defense}|{bb.norm}|{k}{tag}", f"{JOBS}:blackbox_job",
                                    {"run": run, **base, "attack": attack, "defense": defense, "indices": shard,
                                     "budgets": bb.budgets, "norm": str(bb.norm), "shard": k, **adaptive,
                                     "pool": idx, "starts": STARTS,
                                     **({"per_image": True} if bb.per_image else {})}))
    if cfg.detection.enabled and covers(cfg.detection.runs, run):
        det = cfg.detection
        jobs.append(Job(f"detection|{_name(run)}", f"{JOBS}:detection_job",
                        {"run": run, **base, "attacks": det.attacks, "budget": det.budget, "n_images": det.n_images}))
    return jobs


def _training_defense_jobs(cfg: CampaignConfig, runs: list[str], base: dict[str, Any], out: Path) -> list[Job]:
    d = cfg.defenses

    def tag(defense: str) -> str:  # fixed-source fine-tunes are other models than the online ones
        return f"_fixed-{d.train_attacks.get(defense, d.train_attack)}" if d.source == "fixed" else ""

    return [Job(f"defense|{_name(run)}|{defense}" + tag(defense).replace("_fixed", "|fixed", 1)
                + _sigma_tag(_sigma(cfg, defense)), f"{JOBS}:training_defense_job",
                {"dataset": base["dataset"], "data_dir": base["data_dir"], "seed": cfg.seed, "defense": defense,
                 "base_run": run, "out": str(out / "models" / f"{_name(run)}_{defense}{tag(defense)}"),
                 "train_attack": d.train_attacks.get(defense, d.train_attack), "train_source": d.source,
                 "train_eps": d.train_eps, "train_steps": d.train_steps, "epochs": d.epochs,
                 "eval_attacks": d.eval_attacks, "eval_n": d.eval_n, "eval_eps": cfg.transfer.eps, **_device(cfg),
                 **_sigma(cfg, defense)})
            for run in runs if covers(d.runs, run) and is_run(run) for defense in d.defenses]


def _sigma_tag(kwargs: dict[str, Any]) -> str:
    """Job-key suffix for a non-default noise sigma (``|sigma=auto`` when calibrated)."""
    if "noise_sigma" not in kwargs:
        return ""
    return "|sigma=auto" if kwargs["noise_sigma"] is None else f"|sigma={kwargs['noise_sigma']:g}"


def _sigma(cfg: CampaignConfig, defense: str) -> dict[str, Any]:
    """The noise-training arguments: none for the default explicit sigma (job arguments unchanged);
    ``defenses.noise_sigma: null`` calibrates it (with the calibration section's tolerance)."""
    d, settings = cfg.defenses, cfg.calibration.settings(cfg.seed)
    if defense not in ("noise", "ant") or d.noise_sigma == 0.05:
        return {}
    if d.noise_sigma is None and settings is not None:
        return {"noise_sigma": None, "calibration": settings.to_dict(), "sigma_epochs": cfg.calibration.sigma_epochs}
    return {"noise_sigma": 0.05 if d.noise_sigma is None else d.noise_sigma}


def run_campaign(cfg: CampaignConfig, runs: list[str], out: str | Path, dataset: str | None = None,
                 data_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue) the campaign; writes ``OUT/audit.json`` and ``OUT/timings.json`` and returns
    the results dict the report is rendered from. Stored jobs are reused only when computed from the
    same inputs (model weights, data, attack, eps, budgets, seed, ...); a folder holding results of
    other inputs is refused with the difference named, or recomputed with ``overwrite``."""
    if not runs:
        raise MedShieldError("an audit needs at least one model: --run RUN")
    for run in runs:
        if not is_run(run) and not Path(run).is_file():
            raise MedShieldError(f"{run} is neither a trained run (no config.json) nor a target card")
    validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = str(data_dir) if data_dir is not None else None
    store = RecordStore(out / "jobs.json", overwrite=overwrite)
    calibrations = run_jobs(with_identity(calibration_jobs(cfg, runs, dataset, data_dir)), store, executor=cfg.executor,
                            workers=cfg.workers, address=cfg.address, description="calibration",
                            threads=cfg.threads_per_job)
    jobs = plan(cfg, runs, dataset, data_dir, out, calibrations)
    outputs = run_jobs(jobs, store, executor=cfg.executor, workers=cfg.workers, address=cfg.address,
                       description="audit", threads=cfg.threads_per_job, gpus=cfg.gpus_per_job)
    results, timings, examples = assemble(cfg, jobs, outputs)
    write_json(out / "audit.json", results)
    save_grid_examples(out / GRID_EXAMPLES, examples)
    write_json(out / "timings.json", timings)
    return results


def assemble(cfg: CampaignConfig, jobs: list[Job], outputs: list[Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                             dict[str, dict[str, Any]]]:
    """Group job outputs into result sections; wall-clock fields are split off into timings and the grid's
    example images (per run) into the third value (stored beside ``audit.json`` as ``grid_examples.npz``)."""
    res: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "config": cfg.model_dump(exclude={"executor", "workers", "address", "gpus_per_job"}), "clean": [],
                           "whitebox": [], "transfer": [], "blackbox": [], "defended_clean": [], "detection": [],
                           "defenses": [], "calibrations": [], "strips": {}}
    multilabel: dict[str, list[Any]] = {"mlclean": [], "mlwhitebox": [], "mlblackbox": []}
    timings: dict[str, Any] = {}
    examples: dict[str, dict[str, Any]] = {}
    shards: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for job, out in zip(jobs, outputs):
        kind = job.key.split("|")[0]
        kept, times = split_timings(out)
        timings[job.key] = times
        if kind == "blackbox":
            shards.setdefault((kept["run"], kept["attack"], kept["defense"]), []).append(out)
        elif kind == "defense":
            res["defenses"] += kept
        elif kind in ("whitebox", "transfer"):
            for rec in kept:
                if "grid_examples" in rec:
                    examples[rec["run"]] = rec.pop("grid_examples")
            res[kind] += kept
        elif kind in multilabel:
            multilabel[kind] += kept if isinstance(kept, list) else [kept]
        elif kind == "calibration":
            res["calibrations"].append(kept)
        else:  # clean, defended_clean, detection: one record per job
            res[kind].append(kept)
    res["whitebox_worst_case"] = worst_case(res["whitebox"])
    if multilabel["mlclean"]:  # per-finding results of multi-label targets (absent otherwise)
        res["multilabel"] = {"clean": multilabel["mlclean"], "whitebox": multilabel["mlwhitebox"],
                             "label_only": multilabel["mlblackbox"]}
    bb = cfg.blackbox
    bcfg = BlackboxConfig(attacks=bb.attacks, budgets=bb.budgets, defenses=bb.defenses, seed=cfg.seed, norm=str(bb.norm))
    costs = {(r["run"], r["defense"]): r for r in res["defended_clean"]}
    specs = {str(d): d for d in bb.defenses} | {c["resolved"]: DefenseSpec.parse(c["resolved"]) for c in res["calibrations"]}
    calibrated = {(c["run"], c["resolved"]): calibration_summary(c) for c in res["calibrations"]}
    for (run, attack, defense), parts in shards.items():
        parts.sort(key=lambda p: p["shard"])
        k = int(parts[0].get("adaptive_k", 1))
        for rec in summarise(attack, specs[defense], parts, replace(bcfg, adaptive_k=k), costs.get((run, defense))):
            kept, _ = split_timings(rec)
            extra = {"calibration": calibrated[(run, defense)]} if (run, defense) in calibrated else {}
            res["blackbox"].append({"run": run, **kept, **extra,
                                    "randomized_target": bool(parts[0].get("randomized_target", False))})
        res["strips"][f"{run}|{attack}|{defense}"] = {"index": parts[0]["indices"][0],
                                                      "image_shape": parts[0]["image_shape"],
                                                      "original": parts[0]["first_image"],
                                                      "adversarial": parts[0]["first_adversarial"]}
    return res, timings, examples
