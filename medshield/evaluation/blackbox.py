"""The black-box (label-only) evaluation runner: attacks x defenses x budgets on chosen test images,
resumable per (attack, defense, image shard) job through :class:`RecordStore`, summarised as records
with bootstrap intervals (thesis Tables 5-2 to 5-4)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS, LabelOracle, model_label_fn
from medshield.attacks.decision.oracle import LabelFn, majority_vote
from medshield.data import ImageSet
from medshield.defenses.inference import NO_DEFENSE, DefenseSpec
from medshield.errors import MedShieldError
from medshield.models import model_device
from medshield.evaluation.checks import is_randomised
from medshield.evaluation.defended import defended_metrics
from medshield.evaluation.identity import job_identity, model_fingerprint
from medshield.evaluation.store import RecordStore
from medshield.progress import progress_bar

# How starting points are found, part of every local job's identity: noise, the shard's other images,
# then the attacker's own images of every class (:func:`start_pool_indices`).
STARTS = "noise,shard,pool5"


@dataclass
class BlackboxConfig:
    """What a black-box evaluation runs (typed: budgets are ints, defenses :class:`DefenseSpec`)."""

    attacks: Sequence[str] = ("hsja", "gbba", "opt")
    budgets: Sequence[int] = (1000, 5000, 10_000, 15_000, 20_000)
    defenses: Sequence[DefenseSpec] = (NO_DEFENSE,)
    n_images: int = 50
    shard_size: int = 10
    seed: int = 0
    n_bootstrap: int = 1000
    norm: str = "l2"
    batch_size: int | None = None  # rows per label-function call (a remote target: one request per call);
    # None: a local model's measured best batch (medshield.models.inference; randomised defenses 4096)
    layout: str = "contiguous"  # a local model's forward: pinned (records bit-reproducible), or "auto"
    # (measured, faster where channels-last wins; its logits differ in the last bit), "channels_last", "frozen"
    adaptive_k: int = 1  # the attacker repeats each query k times and takes the majority label
    clean_repeats: int = 3  # noisy passes over the split for defended_clean_accuracy
    verify_repeats: int = 10  # fresh defended answers per claimed adversarial (defended_success_rate)
    surrogate_run: str | None = None  # the attacker's substitute model for the ``surrogate`` attack (a run folder)


def select_images(label_fn: LabelFn, part: ImageSet, n: int, seed: int) -> torch.Tensor:
    """``n`` test-image indices drawn uniformly (``torch.Generator`` seeded with ``seed``) among the
    images ``label_fn`` classifies correctly, sorted; the same target, split and seed give the same images."""
    correct = torch.nonzero(label_fn(part.images()) == part.labels).squeeze(1)
    if correct.numel() < n:
        raise MedShieldError(f"only {correct.numel()} correctly classified images; ask for --n-images <= {correct.numel()}")
    pick = torch.randperm(correct.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return correct[pick].sort().values


def start_pool_indices(part: ImageSet, exclude: Sequence[int], seed: int, per_class: int = 5) -> list[int]:
    """The attacker's own images, a starting point of last resort (see ``other_image_start``): up to
    ``per_class`` images of every class of ``part`` outside ``exclude``, seeded, the classes interleaved
    so that a starting point of another class is among the first tries whatever an image's class."""
    order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    skip = set(int(i) for i in exclude)
    by_class: dict[int, list[int]] = {}
    for i in order:
        c = int(part.labels[i])
        if i not in skip and len(by_class.setdefault(c, [])) < per_class:
            by_class[c].append(i)
    picks = [by_class[c] for c in sorted(by_class)]
    return [i for row in zip(*picks) for i in row] if picks else []


def counting(label_fn: LabelFn) -> tuple[LabelFn, list[int]]:
    """``label_fn`` plus a one-element list counting the images sent through it."""
    sent = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        sent[0] += int(x.shape[0])
        return label_fn(x)

    return counted, sent


def attack_options(attack_name: str, surrogate: nn.Module | None) -> dict[str, Any]:
    """Constructor arguments beyond ``norm``: the ``surrogate`` attack gets the attacker's substitute model."""
    if attack_name.lower() != "surrogate":
        return {}
    if surrogate is None:
        raise MedShieldError("the surrogate attack needs a substitute model: pass --surrogate RUN "
                             "(a run trained by the attacker, e.g. another `medshield train` run)")
    return {"surrogate": surrogate}


def run_job(attack_name: str, label_fn: LabelFn, x: torch.Tensor, y: torch.Tensor, cfg: BlackboxConfig,
            seed: int, desc: str, base_fn: LabelFn | None = None, surrogate: nn.Module | None = None,
            starts: torch.Tensor | None = None, start_pool: torch.Tensor | None = None) -> dict[str, Any]:
    """One (attack, defense, shard) job: per-image distances at every budget, queries and seconds.
    ``sent_attack`` counts the images that reached ``label_fn`` during the attack (equal to the sum of
    per-image queries; with ``cfg.adaptive_k = k`` every logical query is ``k`` model queries, all
    charged), ``sent_verify`` the evaluator's re-checks afterwards.

    Against a randomised defense pass the undefended model as ``base_fn``: ``l2`` then holds the
    adversarials that fool the classifier itself (inf where the attacker's claim does not), and the job
    adds the attacker's claims (``claim_l2``: the closest point the noisy target answered as adversarial,
    what the attacker would hand in) and ``defended_fool_rate`` (the share of ``cfg.verify_repeats``
    fresh defended answers that are wrong on the claim). ``starts``: adversarial starting images (one
    per image; else uniform noise, then the shard's other images, then ``start_pool``)."""
    attack = DECISION_ATTACKS.create(attack_name, norm=cfg.norm, **attack_options(attack_name, surrogate))
    counted, sent = counting(label_fn)  # what the attack sends
    rechecked, resent = counting(label_fn)  # what the evaluator sends afterwards
    start = time.perf_counter()
    with progress_bar(desc, total=x.shape[0] * max(cfg.budgets)) as advance:
        seen = [0]

        def report(o: LabelOracle) -> None:
            used = int(o.queries.sum())
            best = o.current_best()
            advance(used - seen[0], info=f"queries {used:,}  median L2 {float(best.median()):.3f}")
            seen[0] = used

        results = attack(majority_vote(counted, cfg.adaptive_k), x, y, cfg.budgets, cost=cfg.adaptive_k,
                         generator=torch.Generator().manual_seed(seed), starts=starts, progress=report,
                         start_pool=start_pool,
                         verify_fn=base_fn if base_fn is not None else majority_vote(rechecked, cfg.adaptive_k))
    oracle = results.oracle
    claims = defended_claims(oracle, rechecked, cfg.verify_repeats) if base_fn is not None else {}
    return {
        "sent_attack": sent[0],
        "sent_verify": resent[0],
        "l2": {str(b): r.l2.tolist() for b, r in results.items()},
        "linf": {str(b): r.linf.tolist() for b, r in results.items()},
        **claims,
        "queries": oracle.queries.tolist(),
        "norm": str(attack.norm),
        "seconds": time.perf_counter() - start,
        "first_adversarial": {str(b): r.adversarial[0].flatten().tolist() for b, r in results.items()},
    }


def defended_claims(oracle: LabelOracle, label_fn: LabelFn, repeats: int) -> dict[str, Any]:
    """Per budget: the distance of each image's claimed adversarial (the closest point the defended
    target answered as adversarial; inf where none) and the share of ``repeats`` fresh answers of the
    defended target that are wrong on it (0 where no claim). Evaluator queries, not charged to the attack."""
    claim_l2, fool = {}, {}
    for budget in oracle.budgets:
        adv, dist = oracle.best(budget)
        found = torch.isfinite(dist)
        rate = torch.zeros(oracle.n)
        if found.any() and repeats > 0:
            rows = torch.nonzero(found).squeeze(1)
            pred = label_fn(adv[rows].repeat(repeats, 1, 1, 1)).long().cpu()  # [repeats * M], row-major
            rate[rows] = oracle.fools(rows.repeat(repeats), pred).reshape(repeats, -1).float().mean(0)
        claim_l2[str(budget)] = dist.tolist()  # the oracle's best distance is the claim's (inf where none)
        fool[str(budget)] = rate.tolist()
    return {"claim_l2": claim_l2, "defended_fool_rate": fool}


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], float], n: int, seed: int) -> list[float | None]:
    """Percentile 95% bootstrap interval of ``stat`` over ``values``."""
    if values.size == 0 or n <= 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    boots = [stat(values[rng.integers(0, values.size, values.size)]) for _ in range(n)]
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def summarise(attack: str, defense: DefenseSpec | None, jobs: list[dict[str, Any]], cfg: BlackboxConfig,
              clean: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per budget from the shard jobs of one (attack, defense); ``defense`` None stands for a
    remote target's own defenses (``defense="remote"``); ``clean`` holds the
    defended model's metrics on the whole split (``defended_clean_accuracy``, ``_auc``, ``flip_rate``).

    ``mean_l2``/``median_l2`` are over the attacker's claimed adversarials (``claim_rate`` of the
    images have one; the same images at every budget once found, so the curves are monotone);
    ``success_rate`` is the share that fool the undefended classifier, ``defended_success_rate`` the
    expected share of single queries to the defended model they fool, ``verified_*_l2`` the distances
    over the images that fool the classifier. Without a defense all three rates coincide. ``norm`` is
    the norm the attack minimised (``linf`` for RayS whatever ``cfg.norm``), ``mean_linf``/``median_linf``
    the L-inf distances of the verified adversarials (what an L-inf attack such as RayS is judged by)."""
    name, params, label = ("remote", {}, "remote") if defense is None else \
        (defense.name, defense.resolved(), defense.label())
    clean = clean or {}
    records = []
    seconds = sum(j["seconds"] for j in jobs)
    for budget in cfg.budgets:
        verified = np.array([v for j in jobs for v in j["l2"][str(budget)]], dtype=float)
        linf = np.array([v for j in jobs for v in j.get("linf", {}).get(str(budget), [])], dtype=float)
        linf = linf[np.isfinite(linf)]
        l2 = np.array([v for j in jobs for v in j.get("claim_l2", j["l2"])[str(budget)]], dtype=float)
        fooled = np.array([v for j in jobs for v in j["defended_fool_rate"][str(budget)]], dtype=float) \
            if all("defended_fool_rate" in j for j in jobs) else np.isfinite(verified).astype(float)
        ok = np.isfinite(l2)
        good, real = l2[ok], verified[np.isfinite(verified)]
        records.append({
            "attack": attack, "defense": name, "defense_params": params,
            "defense_spec": label, "adaptive_k": int(cfg.adaptive_k),
            "budget": int(budget), "n_images": int(l2.size), "norm": jobs[0].get("norm", cfg.norm) if jobs else cfg.norm,
            "defended_clean_accuracy": clean.get("accuracy"), "defended_clean_auc": clean.get("auc"),
            "flip_rate": clean.get("flip_rate"),
            "mean_l2": float(good.mean()) if good.size else None,
            "median_l2": float(np.median(good)) if good.size else None,
            "mean_l2_ci": bootstrap_ci(good, np.mean, cfg.n_bootstrap, cfg.seed),
            "median_l2_ci": bootstrap_ci(good, np.median, cfg.n_bootstrap, cfg.seed),
            "claim_rate": float(ok.mean()) if l2.size else 0.0,
            "success_rate": float(np.isfinite(verified).mean()) if l2.size else 0.0,
            "defended_success_rate": float(fooled.mean()) if l2.size else 0.0,
            "verified_mean_l2": float(real.mean()) if real.size else None,
            "verified_median_l2": float(np.median(real)) if real.size else None,
            "mean_linf": float(linf.mean()) if linf.size else None,
            "median_linf": float(np.median(linf)) if linf.size else None,
            "seconds": seconds,
            "l2_per_image": [float(v) if np.isfinite(v) else None for v in l2],
            "verified_l2_per_image": [float(v) if np.isfinite(v) else None for v in verified],
        })
    return records


def clean_job(model: nn.Module, part: ImageSet, defense: DefenseSpec, cfg: BlackboxConfig,
              positive_class: int | None) -> dict[str, Any]:
    """The defended model's accuracy, AUC and flip rate on the whole split (what the defense costs)."""
    return defended_metrics(model, part.images(), part.labels, positive_class, defense, cfg.clean_repeats, cfg.seed)


def adaptive_config(cfg: BlackboxConfig, defended: nn.Module | None, x: torch.Tensor) -> BlackboxConfig:
    """``cfg`` as run against ``defended``: the adaptive attacker's ``k`` repeats per query only where the
    answers are random (a deterministic model answers the same every time, so repeating would only waste
    the budget and understate the attack); a remote target (``defended`` None) keeps the user's ``k``."""
    if cfg.adaptive_k == 1 or defended is None:
        return cfg
    device = model_device(defended)
    return cfg if is_randomised(defended, x[:8].to(device)) else replace(cfg, adaptive_k=1)


def run_blackbox(model: nn.Module | None, part: ImageSet, out: str | Path, cfg: BlackboxConfig,
                 label_fn: LabelFn | None = None, target: str = "local",
                 positive_class: int | None = None, surrogate: nn.Module | None = None,
                 identity: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run every (defense, attack, shard) job not yet in ``OUT/jobs.json``; returns the summary dict
    (records, config, image indices, strip images) that :func:`medshield.api.blackbox` writes.

    ``cfg.defenses`` are :class:`DefenseSpec` values (``none``, ``rnd:nu=0.05``, ``dnd:m=0.01:n=0.5``).
    Each defense's clean metrics on the whole split are computed once and stored with the jobs.
    ``label_fn`` replaces the local model (e.g. a remote service's labels): its defenses are the
    service's own, so ``cfg.defenses`` must be ``["none"]``, records carry ``defense="remote"`` and no
    clean metrics (they would spend the service's query budget).

    ``identity`` (``{"model": ..., "data": ...}``, see :mod:`medshield.evaluation.identity`): a stored
    job is reused only when it came from the same model, data, defense, attack, budgets, seed and
    images; otherwise it is refused with the difference named, or recomputed with ``overwrite``."""
    if label_fn is not None and any(not d.is_none for d in cfg.defenses):
        raise MedShieldError("a remote target applies its own defenses; use --defense none with --target")
    if cfg.adaptive_k < 1:
        raise MedShieldError(f"--adaptive must be >= 1 (repeats per query), got {cfg.adaptive_k}")
    for name in cfg.attacks:
        DECISION_ATTACKS.get(name)
        attack_options(name, surrogate)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out / "jobs.json", overwrite=overwrite)

    def inputs(**parts: Any) -> dict[str, Any] | None:
        return None if identity is None else job_identity(**identity, **parts)

    select_fn = label_fn or model_label_fn(model, cfg.batch_size, cfg.layout)
    indices = select_images(select_fn, part, cfg.n_images, cfg.seed)
    x, y = part.images(indices.tolist()), part.labels[indices]
    pool = part.images(start_pool_indices(part, indices.tolist(), cfg.seed))
    records, strips = [], {}
    for defense_spec in cfg.defenses:
        name, spec = defense_spec.name, defense_spec.label()
        defended = defense_spec.build(model, seed=cfg.seed) if label_fn is None else None
        dcfg = adaptive_config(cfg, defended, x)
        k_tag = f"|k{dcfg.adaptive_k}" if dcfg.adaptive_k > 1 else ""
        # the default pinned layout keeps old keys; another one is part of the job (logits differ in the last bit)
        l_tag, l_part = ("", {}) if dcfg.layout == "contiguous" else (f"|layout={dcfg.layout}", {"layout": dcfg.layout})
        # jobs keep their old keys (a defense at its defaults is keyed by its name), so old runs resume
        tag = name if defense_spec.resolved() == DefenseSpec(name).resolved() else spec
        clean = None
        if label_fn is None:
            clean = store.get_or_run(f"clean|{spec}|seed{dcfg.seed}|repeats{dcfg.clean_repeats}|n{len(part)}",
                                     lambda: clean_job(model, part, defense_spec, dcfg, positive_class),
                                     inputs(defense=spec, seed=dcfg.seed, repeats=dcfg.clean_repeats))
        fn = label_fn or model_label_fn(defended, dcfg.batch_size, dcfg.layout)
        base_fn = model_label_fn(model, dcfg.batch_size, dcfg.layout) if label_fn is None and name != "none" else None
        v_tag = f"|verify-base{dcfg.verify_repeats}" if base_fn is not None else ""
        defense = "remote" if label_fn is not None else name
        for attack in dcfg.attacks:
            jobs = []
            for k, rows in enumerate(torch.arange(x.shape[0]).split(dcfg.shard_size)):
                s_tag = f"|surrogate={dcfg.surrogate_run}" if attack.lower() == "surrogate" else ""
                key = f"{tag if label_fn is None else defense}|{attack}|{dcfg.norm}|{','.join(map(str, dcfg.budgets))}|" \
                      f"seed{dcfg.seed}{k_tag}{v_tag}{s_tag}{l_tag}|{','.join(map(str, indices[rows].tolist()))}"
                desc = f"{attack} vs {spec if label_fn is None else defense} [{k + 1}/{-(-x.shape[0] // dcfg.shard_size)}]"
                job_inputs = inputs(
                    defense=spec if label_fn is None else defense, attack=attack, norm=dcfg.norm,
                    budgets=list(dcfg.budgets), seed=dcfg.seed + k, adaptive_k=dcfg.adaptive_k,
                    verify_repeats=dcfg.verify_repeats if base_fn is not None else None,
                    surrogate=model_fingerprint(dcfg.surrogate_run) if s_tag and dcfg.surrogate_run else None,
                    images=indices[rows].tolist(), starts=STARTS, **l_part)
                jobs.append(store.get_or_run(key, lambda: run_job(attack, fn, x[rows], y[rows], dcfg, dcfg.seed + k,
                                                                  desc, base_fn, surrogate, start_pool=pool), job_inputs))
            records += summarise(attack, defense_spec if label_fn is None else None, jobs, dcfg, clean)
            strips[f"{attack}|{spec if label_fn is None else defense}"] = jobs[0]["first_adversarial"]
    config = {**cfg.__dict__, "budgets": list(cfg.budgets), "defenses": [str(d) for d in cfg.defenses]}
    return {"records": records, "config": config, "target": target, "image_indices": indices.tolist(),
            "image_shape": list(x.shape[1:]), "first_image": x[0].flatten().tolist(), "strips": strips}
