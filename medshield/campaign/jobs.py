"""The campaign's job functions. Each takes JSON-able keyword arguments, loads what it needs, is
deterministic from its arguments (own seeds, own noise generators) and returns JSON-able records, so
any executor (inline, process pool, Ray) can run it and a killed campaign can re-run it."""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from medshield.attacks import create_attack
from medshield.attacks.decision import model_label_fn
from medshield.defenses.inference import DefenseSpec
from medshield.evaluation.blackbox import STARTS, BlackboxConfig, run_job, start_pool_indices
from medshield.evaluation.calibration import CalibrationConfig, calibrate_dataset
from medshield.evaluation.checks import is_randomised
from medshield.evaluation.defended import defended_clean_metrics
from medshield.evaluation.detection import DetectionConfig, run_detection
from medshield.evaluation.multilabel import (
    FindingAttackConfig, clean_finding_metrics, finding_blackbox_records, finding_whitebox_records,
)
from medshield.evaluation.services import eval_images, evaluate_model, model_label, run_info, train_defended
from medshield.evaluation.transfer import check_compatible, transfer_record
from medshield.evaluation.whitebox import WhiteboxJob, grid_examples, run_batched, run_whitebox
from medshield.models import model_device, predict
from medshield.models.train import TrainConfig
from medshield.report.whitebox import write_whitebox_report
from medshield.targets import Target, open_target, ref_name
from medshield.targets.data import load_target_data
from medshield.types import Norm, eps_label, to_jsonable

TIMING_KEYS = frozenset({"seconds", "images_per_second", "source_seconds", "train_seconds"})


@lru_cache(maxsize=8)
def _load_target(run: str, dataset: str | None, data_dir: str | None, device: str = "cpu") -> tuple[Target, Any]:
    """A run folder or target card, and its data (cached per process)."""
    target = open_target(run, device)
    return target, load_target_data(target, dataset, data_dir)


def _load(run: str, dataset: str | None, data_dir: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """The prediction model (clean metrics, label-only attacks) and data of a run or card."""
    target, ds = _load_target(run, dataset, data_dir, device)
    return target.model, ds


def derived_seed(seed: int, *parts: Any) -> int:
    """A job's own seed from the campaign seed and the job's identity (stable across runs and machines)."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**31)


def clean_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, bootstrap: int, device: str = "cpu") -> dict[str, Any]:
    """Clean accuracy, sensitivity, specificity, AUC (bootstrap 95% CIs) of one model."""
    target, ds = _load_target(run, dataset, data_dir, device)
    metrics = evaluate_model(target.model, ds, split, seed=seed, n_bootstrap=bootstrap)
    return {"run": ref_name(run), "model": model_label(target), "dataset": ds.name, "split": split,
            "n": len(ds.split(split)), "classes": ds.class_names, "positive_class": ds.positive_class, **metrics}


def whitebox_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, attack: str,
                 eps: list[float], norm: str, n_images: int | None, batch_size: int, device: str = "cpu",
                 attack_kwargs: dict[str, Any] | None = None, eot_samples: int = 16, grid_eps: float | None = None,
                 grid_images: int = 2) -> list[dict[str, Any]]:
    """One attack at every eps on one model (records as ``medshield attack`` writes them);
    ``attack_kwargs`` are the attack's constructor options, ``eot_samples`` the EOT draws used if the
    model turns out randomised. With ``grid_eps`` the record at that eps also carries ``grid_examples``
    (``grid_images`` per class: the images the report's grid shows), so the report never re-runs an attack."""
    target, ds = _load_target(run, dataset, data_dir, device)
    model = target.require_gradients()
    x, y = eval_images(ds, split, n_images, seed)
    job = WhiteboxJob(attacks=[attack], eps=list(eps), norm=Norm.parse(norm), batch_size=batch_size, seed=seed,
                      attack_kwargs={"pgd": {"restarts": 1}, attack: dict(attack_kwargs or {})},
                      eot_samples=eot_samples)
    meta = {"run": ref_name(run), "model": model_label(target), "dataset": ds.name, "split": split,
            "channels": ds.channels}
    records = run_whitebox(model, x, y, job, positive_class=ds.positive_class, meta=meta)
    if grid_eps is not None:
        rec = min(records, key=lambda r: abs(r["eps"] - grid_eps))
        rec["grid_examples"] = grid_examples(model, x, y, attack, grid_eps, Norm.parse(norm), seed,
                                             class_names=ds.class_names, per_class=grid_images)
    return records


def transfer_job(source: str, targets: list[str], dataset: str | None, data_dir: str | None, split: str, seed: int,
                 attack: str, eps: float, norm: str, n_images: int | None, batch_size: int = 128,
                 device: str = "cpu") -> list[dict[str, Any]]:
    """Adversarials made on ``source``, evaluated on every target (one row of the transfer matrix)."""
    src_target, ds = _load_target(source, dataset, data_dir, device)
    src = src_target.require_gradients()
    models = {ref_name(t): _load(t, dataset, data_dir, device)[0] for t in targets}
    check_compatible({ref_name(source): src, **models})
    x, y = eval_images(ds, split, n_images, seed)
    result = run_batched(create_attack(attack, norm=norm), src, x, y, eps, batch_size, seed)
    meta = {"attack": attack, "norm": norm, "dataset": ds.name, "split": split, "eps": eps, "eps_label": eps_label(eps)}
    return [transfer_record(ref_name(source), name, y, predict(m, x), predict(m, result.adversarial), result.seconds,
                            ds.positive_class, meta) for name, m in models.items()]


def blackbox_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, attack: str,
                 defense: DefenseSpec, indices: list[int], budgets: list[int], norm: str, shard: int,
                 device: str = "cpu", adaptive_k: int = 1, per_image: bool = False,
                 pool: list[int] | None = None, starts: str | None = None) -> dict[str, Any]:
    """One (attack, defense, image shard) of the label-only evaluation; the defense's noise comes from a
    generator seeded by the job's identity, so a re-run gives the same answers. When the defended
    model is randomised (two passes on the same images differ), the attacker takes a majority vote over
    ``adaptive_k`` repeats of every query (all charged to the budget); the output says so.

    ``per_image``: every image is attacked on its own, with a seed (attack and defense noise) derived
    from its index, so the records do not depend on how the images are sharded: N workers running
    one-image shards give exactly the records of one job over all images (no cross-image batching).
    Its starting point is the first image of ``pool`` (all the evaluation's images, the same for every
    shard) with another label, where noise finds none. ``starts`` (:data:`STARTS`, part of the job's
    identity): where noise and the shard's other images give no starting point, the attacker's own
    images of every class (:func:`start_pool_indices`, outside the evaluation's images) are tried."""
    model, ds = _load(run, dataset, data_dir, device)
    part = ds.split(split)
    x, y = part.images(indices), part.labels[indices]
    start_pool = part.images(start_pool_indices(part, pool or indices, seed)) if starts == STARTS else None
    desc = f"{attack} vs {defense} [{ref_name(run)} #{shard}]"
    if per_image:
        pool_y = part.labels[pool or indices]
        parts = [_attack_shard(model, x[i:i + 1], y[i:i + 1], attack, defense, budgets, norm, seed, adaptive_k,
                               derived_seed(seed, run, attack, defense, "image", index), desc,
                               _other_label_start(part, pool or indices, pool_y, y[i]), start_pool)
                 for i, index in enumerate(indices)]
        rec, randomized, k = merge_records([p[0] for p in parts]), any(p[1] for p in parts), max(p[2] for p in parts)
    else:
        rec, randomized, k = _attack_shard(model, x, y, attack, defense, budgets, norm, seed, adaptive_k,
                                           derived_seed(seed, run, attack, defense, shard), desc, start_pool=start_pool)
    if shard:
        rec.pop("first_adversarial")  # one image's strip per (attack, defense) is enough
    else:
        rec["first_image"] = x[0].flatten().tolist()
    return {"run": ref_name(run), "attack": attack, "defense": str(defense), "shard": shard, "indices": indices,
            "image_shape": list(x.shape[1:]), "randomized_target": randomized, "adaptive_k": k, **rec}


def _attack_shard(model: Any, x: torch.Tensor, y: torch.Tensor, attack: str, defense: DefenseSpec, budgets: list[int],
                  norm: str, seed: int, adaptive_k: int, job_seed: int, desc: str,
                  starts: torch.Tensor | None = None,
                  start_pool: torch.Tensor | None = None) -> tuple[dict[str, Any], bool, int]:
    """One attack run on ``x`` against the defended model seeded with ``job_seed``: the record, whether
    the defended model is randomised, and the majority-vote repeats used."""
    defended = defense.build(model, seed=job_seed)
    randomized = is_randomised(defended, x[:8].to(model_device(model)))
    cfg = BlackboxConfig(attacks=[attack], budgets=budgets, defenses=[defense], n_images=len(y), seed=seed,
                         norm=norm, adaptive_k=adaptive_k if randomized else 1)
    # contiguous, not measured: records are a function of the configuration, whatever worker runs the job
    base_fn = model_label_fn(model, layout="contiguous") if not defense.is_none else None
    rec = run_job(attack, model_label_fn(defended, layout="contiguous"), x, y, cfg, job_seed, desc, base_fn, starts=starts,
                  start_pool=start_pool)
    return rec, randomized, cfg.adaptive_k


def _other_label_start(part: Any, pool: list[int], pool_y: torch.Tensor, label: torch.Tensor) -> torch.Tensor | None:
    """``[1, C, H, W]``: the first image of ``pool`` labelled other than ``label`` (None if there is none)."""
    other = torch.nonzero(pool_y != label).squeeze(1)
    return part.images([pool[int(other[0])]]) if other.numel() else None


def merge_records(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image run records as one shard's: per-image lists (also per budget) concatenated in order,
    counts and seconds summed, the first image's strip and the rest taken from the first record."""
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if key == "first_adversarial" or isinstance(first, str):
            out[key] = first
        elif isinstance(first, dict):
            out[key] = {b: [v for p in parts for v in p[key][b]] for b in first}
        elif isinstance(first, list):
            out[key] = [v for p in parts for v in p[key]]
        else:
            out[key] = sum(p[key] for p in parts)
    return out


def calibration_job(run: str, dataset: str | None, data_dir: str | None, defense: DefenseSpec, settings: dict[str, Any],
                    device: str = "cpu") -> dict[str, Any]:
    """Calibrate a parameter-less noise defense on the run's validation split (cost also measured on
    the test split): the record names the chosen setting (``resolved``) and the searched curve."""
    model, ds = _load(run, dataset, data_dir, device)
    return calibrate_dataset(model, ds, defense, CalibrationConfig.from_dict(settings), ref_name(run))


def defended_clean_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int,
                       defense: DefenseSpec, device: str = "cpu") -> dict[str, Any]:
    """What an inference-time defense (a spec such as ``rnd:nu=0.04``) costs on the clean split:
    accuracy, AUC, flip rate."""
    model, ds = _load(run, dataset, data_dir, device)
    rec = defended_clean_metrics(model, ds, defense, split=split, seed=derived_seed(seed, run, defense, "clean"))
    return {"run": ref_name(run), **rec, "defense": str(defense)}


def training_defense_job(dataset: str | None, data_dir: str | None, seed: int, defense: str, base_run: str,
                         out: str, train_attack: str, train_eps: float, train_steps: int, epochs: int,
                         eval_attacks: list[str], eval_n: int | None, eval_eps: float, device: str = "cpu",
                         train_source: str = "online", noise_sigma: float | None = 0.05,
                         calibration: dict[str, Any] | None = None, sigma_epochs: int = 1) -> list[dict[str, Any]]:
    """Fine-tune ``base_run`` with a training-time defense and evaluate it white-box (resumes its training).
    ``train_source="fixed"``: the adversarials come from ``base_run`` itself, not from the model being trained;
    ``noise_sigma`` None calibrates the noise of ``noise``/``ant`` to ``calibration`` (settings dict)."""
    info = run_info(base_run)
    model_name = info["model"]["name"]
    resume = (Path(out) / "state").exists()
    records, whitebox = train_defended(
        dataset or info["data"]["dataset"], out, defense, model=model_name, data_dir=data_dir,
        train_attack=train_attack, train_eps=train_eps, train_steps=train_steps, init_from=base_run,
        source=train_source, source_run=base_run if train_source == "fixed" else None,
        train_config=TrainConfig(epochs=epochs, seed=seed, device=device), eval_attacks=eval_attacks,
        eval_eps=[eval_eps], eval_n=eval_n, resume=resume, overwrite=not resume, noise_sigma=noise_sigma,
        calibration=CalibrationConfig.from_dict(calibration) if calibration else None, sigma_epochs=sigma_epochs)
    write_whitebox_report(whitebox, Path(out) / "eval")
    return [{"base_run": Path(base_run).name, **r} for r in records]


def split_timings(value: Any) -> tuple[Any, Any]:
    """``(value without timing fields, the timing fields)``: results must be identical run to run;
    wall-clock times are kept apart."""
    if isinstance(value, dict):
        kept, times = {}, {}
        for k, v in value.items():
            if k in TIMING_KEYS:
                times[k] = v
                continue
            kv, kt = split_timings(v)
            kept[k] = kv
            if kt not in (None, {}, []):
                times[k] = kt
        return kept, times
    if isinstance(value, list):
        pairs = [split_timings(v) for v in value]
        times = [t for _, t in pairs]
        return [k for k, _ in pairs], (times if any(t not in (None, {}, []) for t in times) else None)
    return to_jsonable(value), None


def detection_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, attacks: list[str],
                  budget: int, n_images: int, device: str = "cpu") -> dict[str, Any]:
    """Stateful stream detection on one model: when each attack's per-image query stream is flagged,
    and how many benign streams (the test split, plain / noisy / shifted) are flagged falsely."""
    model, ds = _load(run, dataset, data_dir, device)
    cfg = DetectionConfig(attacks=attacks, n_images=n_images, budget=budget, within=min(1000, budget), seed=seed)
    return {"run": ref_name(run), **run_detection(model, ds, cfg, split=split)}


# ---- multi-label targets (one sigmoid per finding): per-finding jobs ----

def _multilabel(run: str, dataset: str | None, data_dir: str | None,
                device: str) -> tuple[Target, Any, list[str], list[float]]:
    target, ds = _load_target(run, dataset, data_dir, device)
    return target, ds, target.class_names, target.card.output.threshold_list()


def multilabel_clean_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, bootstrap: int,
                         device: str = "cpu") -> dict[str, Any]:
    """Per-finding AUC, sensitivity and specificity at the card's thresholds (bootstrap 95% CIs) on the split."""
    target, ds, names, thresholds = _multilabel(run, dataset, data_dir, device)
    part = ds.split(split)
    metrics = clean_finding_metrics(target.model, part.images(), part.labels, names, thresholds,
                                    n_bootstrap=bootstrap, seed=seed)
    return {"run": ref_name(run), "model": model_label(target), "dataset": ds.name, "split": split,
            "disease": target.positive_names, **metrics}


def multilabel_whitebox_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, finding: str,
                            eps: list[float], modes: list[str], steps: int, n_images: int | None,
                            device: str = "cpu") -> list[dict[str, Any]]:
    """Hide / add one finding (:class:`~medshield.attacks.multilabel.FindingAttack`) at every eps on
    ``n_images`` seeded images; success = the finding flipped and every other finding unchanged."""
    target, ds, names, thresholds = _multilabel(run, dataset, data_dir, device)
    x, _ = eval_images(ds, split, n_images, seed)
    cfg = FindingAttackConfig(eps=list(eps), modes=tuple(modes), steps=steps, seed=seed)
    recs = finding_whitebox_records(target.require_gradients(), x, names, thresholds, cfg, only=[names.index(finding)])
    return [{"run": ref_name(run), **r, "images": int(x.shape[0])} for r in recs]


def multilabel_label_only_job(run: str, dataset: str | None, data_dir: str | None, split: str, seed: int, finding: str,
                              attack: str, budgets: list[int], modes: list[str], n_images: int,
                              device: str = "cpu") -> list[dict[str, Any]]:
    """A label-only attack on one finding's decision: the oracle answers the whole decision vector and
    the attack is targeted at the vector with that finding flipped and the others held (the split's
    images are the pool of starting points)."""
    target, ds, names, thresholds = _multilabel(run, dataset, data_dir, device)
    x, _ = eval_images(ds, split, n_images, seed)
    cfg = FindingAttackConfig(modes=tuple(modes), budgets=list(budgets), blackbox_attack=attack, seed=seed)
    recs = finding_blackbox_records(target.model, x, names, thresholds, cfg, pool=ds.split(split).images(),
                                    only=[names.index(finding)])
    return [{"run": ref_name(run), **r, "images": int(x.shape[0]), "pixels": int(x[0].numel())} for r in recs]
