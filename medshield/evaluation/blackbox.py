"""The black-box (label-only) evaluation runner: attacks x defenses x budgets on chosen test images,
resumable per (attack, defense, image shard) job through :class:`RecordStore`, summarised as records
with bootstrap intervals (thesis Tables 5-2 to 5-4)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS, LabelOracle, model_label_fn, results_by_budget
from medshield.data import ImageSet
from medshield.errors import MedShieldError
from medshield.evaluation.store import RecordStore
from medshield.models import predict, predict_labels
from medshield.progress import progress_bar
from medshield.registry import Registry

DefenseFactory = Callable[..., nn.Module]
BLACKBOX_DEFENSES: Registry[nn.Module] = Registry("black-box defense")
"""Inference-time defenses applied to every oracle query: ``create(name, model=..., seed=...)`` returns
an ``nn.Module`` around the model. Only ``none`` here; RND/DND register themselves later."""


@BLACKBOX_DEFENSES.register("none")
def no_defense(model: nn.Module, seed: int = 0) -> nn.Module:
    """The undefended model."""
    return model


@dataclass
class BlackboxConfig:
    attacks: Sequence[str] = ("hsja", "gbba", "opt")
    budgets: Sequence[int] = (1000, 5000, 10_000, 15_000, 20_000)
    defenses: Sequence[str] = ("none",)
    n_images: int = 50
    shard_size: int = 10
    seed: int = 0
    n_bootstrap: int = 1000
    norm: str = "l2"


def select_images(model: nn.Module, part: ImageSet, n: int, seed: int) -> torch.Tensor:
    """``n`` test-image indices drawn uniformly (``torch.Generator`` seeded with ``seed``) among the
    images the model classifies correctly, sorted; the same run, split and seed give the same images."""
    correct = torch.nonzero(predict_labels(predict(model, part.images())) == part.labels).squeeze(1)
    if correct.numel() < n:
        raise MedShieldError(f"only {correct.numel()} correctly classified images; ask for --n-images <= {correct.numel()}")
    pick = torch.randperm(correct.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return correct[pick].sort().values


def run_job(attack_name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: BlackboxConfig,
            seed: int, desc: str) -> dict[str, Any]:
    """One (attack, defense, shard) job: per-image distances at every budget, queries and seconds."""
    attack = DECISION_ATTACKS.create(attack_name, norm=cfg.norm)
    oracle = LabelOracle(model_label_fn(model), x, y, cfg.budgets, norm=attack.norm)
    start = time.perf_counter()
    with progress_bar(desc, total=oracle.n * oracle.max_budget) as advance:
        seen = [0]

        def report(o: LabelOracle) -> None:
            used = int(o.queries.sum())
            best = o.current_best()
            advance(used - seen[0], info=f"queries {used:,}  median L2 {float(best.median()):.3f}")
            seen[0] = used

        attack.run(oracle, torch.Generator().manual_seed(seed), progress=report)
    results = results_by_budget(oracle, time.perf_counter() - start)
    return {
        "l2": {str(b): r.l2.tolist() for b, r in results.items()},
        "linf": {str(b): r.linf.tolist() for b, r in results.items()},
        "queries": oracle.queries.tolist(),
        "seconds": time.perf_counter() - start,
        "first_adversarial": {str(b): r.adversarial[0].flatten().tolist() for b, r in results.items()},
    }


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], float], n: int, seed: int) -> list[float | None]:
    """Percentile 95% bootstrap interval of ``stat`` over ``values``."""
    if values.size == 0 or n <= 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    boots = [stat(values[rng.integers(0, values.size, values.size)]) for _ in range(n)]
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def summarise(attack: str, defense: str, jobs: list[dict[str, Any]], cfg: BlackboxConfig) -> list[dict[str, Any]]:
    """One record per budget from the shard jobs of one (attack, defense)."""
    records = []
    seconds = sum(j["seconds"] for j in jobs)
    for budget in cfg.budgets:
        l2 = np.array([v for j in jobs for v in j["l2"][str(budget)]], dtype=float)
        ok = np.isfinite(l2)
        good = l2[ok]
        records.append({
            "attack": attack, "defense": defense, "budget": int(budget), "n_images": int(l2.size),
            "norm": cfg.norm,
            "mean_l2": float(good.mean()) if good.size else None,
            "median_l2": float(np.median(good)) if good.size else None,
            "mean_l2_ci": bootstrap_ci(good, np.mean, cfg.n_bootstrap, cfg.seed),
            "median_l2_ci": bootstrap_ci(good, np.median, cfg.n_bootstrap, cfg.seed),
            "success_rate": float(ok.mean()) if l2.size else 0.0,
            "seconds": seconds,
            "l2_per_image": [float(v) if np.isfinite(v) else None for v in l2],
        })
    return records


def run_blackbox(model: nn.Module, part: ImageSet, out: str | Path, cfg: BlackboxConfig) -> dict[str, Any]:
    """Run every (defense, attack, shard) job not yet in ``OUT/jobs.json``; returns the summary dict
    (records, config, image indices, strip images) that :func:`medshield.api.blackbox` writes."""
    for name in cfg.attacks:
        DECISION_ATTACKS.get(name)
    for name in cfg.defenses:
        BLACKBOX_DEFENSES.get(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "jobs.json")
    indices = select_images(model, part, cfg.n_images, cfg.seed)
    x, y = part.images(indices.tolist()), part.labels[indices]
    records, strips = [], {}
    for defense in cfg.defenses:
        defended = BLACKBOX_DEFENSES.create(defense, model=model, seed=cfg.seed)
        for attack in cfg.attacks:
            jobs = []
            for k, rows in enumerate(torch.arange(x.shape[0]).split(cfg.shard_size)):
                key = f"{defense}|{attack}|{cfg.norm}|{','.join(map(str, cfg.budgets))}|seed{cfg.seed}|" \
                      f"{','.join(map(str, indices[rows].tolist()))}"
                desc = f"{attack} vs {defense} [{k + 1}/{-(-x.shape[0] // cfg.shard_size)}]"
                jobs.append(store.get_or_run(key, lambda: run_job(attack, defended, x[rows], y[rows], cfg,
                                                                  cfg.seed + k, desc)))
            records += summarise(attack, defense, jobs, cfg)
            strips[f"{attack}|{defense}"] = jobs[0]["first_adversarial"]
    return {"records": records, "config": cfg.__dict__, "image_indices": indices.tolist(),
            "image_shape": list(x.shape[1:]), "first_image": x[0].flatten().tolist(), "strips": strips}
