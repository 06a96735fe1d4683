"""White-box evaluation: every attack x eps on a model and a set of images, as JSON records.

Records hold clean vs robust accuracy, sensitivity/specificity under attack, the success rate, the
perturbation sizes, time and queries, a clinical per-direction breakdown and sanity checks. With a
:class:`RecordStore` a rerun skips finished attack x eps jobs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medshield.attacks import Attack, ExpectationModel, MinimizationAttack, create_attack
from medshield.evaluation.checks import check_result, merge_checks, model_checks
from medshield.evaluation.identity import job_identity
from medshield.models.metrics import classification_metrics
from medshield.evaluation.store import RecordStore
from medshield.models import eval_mode, model_device, predict, predict_labels, probabilities
from medshield.progress import progress_bar
from medshield.types import AttackResult, Norm, eps_label

DIRECTIONS = ("both", "disease_to_normal", "normal_to_disease")
WHITEBOX_ATTACKS: tuple[str, ...] = ("fgsm", "bim", "pgd", "mifgsm", "cw")
"""The attacks of a white-box evaluation by default."""


def select_direction(labels: torch.Tensor, direction: str, positive_class: int | None) -> torch.Tensor:
    """Indices of the images to attack: all, only diseased (disease->normal) or only normal (normal->disease)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    if direction == "both":
        return torch.arange(labels.shape[0])
    if positive_class is None:
        raise ValueError("a clinical direction needs a binary dataset with a positive (disease) class")
    want = labels == positive_class if direction == "disease_to_normal" else labels != positive_class
    return want.nonzero().squeeze(1)


def run_batched(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                batch_size: int, seed: int, advance=None) -> AttackResult:
    """Run ``attack`` over ``x`` in batches on the model's device; one generator seeded with ``seed``."""
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts: list[AttackResult] = []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        parts.append(attack(model, xb.to(device), yb.to(device), eps=eps, generator=gen))
        if advance:
            advance(xb.shape[0])
    return concat_results(parts, sum(p.seconds for p in parts))


def concat_results(parts: list[AttackResult], seconds: float) -> AttackResult:
    """One result (on CPU) from per-batch results; per-image list extras (an ensemble's ``broken_by``,
    its ``member_queries``) are concatenated too."""
    cat = lambda name: torch.cat([getattr(p, name).cpu() for p in parts])  # noqa: E731
    extras: dict[str, Any] = {}
    for key, value in parts[0].extras.items():
        if isinstance(value, list):
            extras[key] = [v for p in parts for v in p.extras[key]]
        elif isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
            extras[key] = {k: [v for p in parts for v in p.extras[key][k]] for k in value}
    return AttackResult(adversarial=cat("adversarial"), success=cat("success"), linf=cat("linf"), l2=cat("l2"),
                        queries=cat("queries"), seconds=seconds, logits=cat("logits"), extras=extras)


def rebudget(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, raw: AttackResult, eps: float,
             norm: Norm, batch_size: int) -> AttackResult:
    """Clip a minimisation attack's unbounded result to ``eps`` in ``norm`` (one forward pass per batch)."""
    device = model_device(model)
    parts = [attack.finalize(model, xb.to(device), yb.to(device), ab.to(device), eps, False, qb.to(device), norm=norm)
             for xb, yb, ab, qb in zip(x.split(batch_size), y.split(batch_size), raw.adversarial.split(batch_size),
                                        raw.queries.split(batch_size))]
    return concat_results(parts, raw.seconds)


def direction_breakdown(labels: torch.Tensor, clean_pred: torch.Tensor, adv_pred: torch.Tensor,
                        positive_class: int | None) -> dict[str, dict[str, Any]]:
    """Per clinical direction: among correctly classified images of the source class, how many flipped."""
    if positive_class is None:
        return {}
    out = {}
    for name, mask in (("disease_to_normal", labels == positive_class), ("normal_to_disease", labels != positive_class)):
        correct = mask & (clean_pred == labels)
        flipped = correct & (adv_pred != labels)
        n_correct = int(correct.sum())
        out[name] = {"n": int(mask.sum()), "clean_correct": n_correct, "flipped": int(flipped.sum()),
                     "flip_rate": int(flipped.sum()) / n_correct if n_correct else None,
                     "robust_accuracy": float((adv_pred[mask] == labels[mask]).double().mean()) if mask.any() else None}
    return out


def summarise(result: AttackResult, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor,
              positive_class: int | None, eps: float | None, norm: Norm) -> dict[str, Any]:
    """The record fields computed from one attack result."""
    if result.logits is None:
        raise ValueError("a white-box result carries the logits on its adversarials")
    clean_pred, adv_pred = predict_labels(clean_logits), predict_labels(result.logits)
    correct = clean_pred == y
    adv_metrics = classification_metrics(y, probabilities(result.logits), positive_class, n_bootstrap=0)
    return {
        "n": int(x.shape[0]),
        "clean_accuracy": float(correct.double().mean()),
        "robust_accuracy": float((adv_pred == y).double().mean()),
        "success_rate": float((correct & (adv_pred != y)).sum()) / max(int(correct.sum()), 1),
        "sensitivity": adv_metrics.get("sensitivity"), "specificity": adv_metrics.get("specificity"),
        "mean_linf": float(result.linf.mean()), "max_linf": float(result.linf.max()) if x.shape[0] else 0.0,
        "mean_l2": float(result.l2.mean()), "max_l2": float(result.l2.max()) if x.shape[0] else 0.0,
        "queries_per_image": float(result.queries.double().mean()) if x.shape[0] else 0.0,
        "seconds": result.seconds, "images_per_second": x.shape[0] / result.seconds if result.seconds else None,
        "directions": direction_breakdown(y, clean_pred, adv_pred, positive_class),
        "checks": check_result(result, x, eps, norm),
        "robust_per_image": (adv_pred == y).int().tolist(),
        **ensemble_fields(result),
    }


def ensemble_fields(result: AttackResult) -> dict[str, Any]:
    """For an ensemble (AutoAttack): per image, the member that broke it (``"clean"``: misclassified
    before any attack; ``None``: withstood all), counts per member, and queries each member spent."""
    if "broken_by" not in result.extras:
        return {}
    broken = result.extras["broken_by"]
    counts: dict[str, int] = {}
    for b in broken:
        if b is not None:
            counts[b] = counts.get(b, 0) + 1
    spent = result.extras.get("member_queries", {})
    return {"broken_by": broken, "broken_by_counts": counts,
            "member_queries_per_image": {k: sum(v) / len(v) if v else 0.0 for k, v in spent.items()}}


def minimal_distances(raw: AttackResult, norm: Norm) -> list[float | None]:
    """A minimisation attack's per-image smallest adversarial perturbation in ``norm`` (None where it
    found none): the distribution behind its robust accuracy at every eps."""
    size = raw.linf if norm is Norm.LINF else raw.l2
    return [float(d) if ok else None for d, ok in zip(size.tolist(), raw.success.tolist())]


def worst_case(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (run, norm, direction, eps): the robust accuracy over *all* attacks run, image by image
    (an image counts as robust only if every attack left it correctly classified), and the single
    attack that came closest (``strongest_attack``, its own ``strongest_robust_accuracy``).
    Records without per-image outcomes fall back to the minimum over attacks."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("run"), r["norm"], r.get("direction", "both"), r["eps"]), []).append(r)
    out = []
    for (run, norm, direction, eps), recs in groups.items():
        per_attack = {r["attack"]: r["robust_accuracy"] for r in recs}
        strongest = min(per_attack, key=per_attack.__getitem__)
        rows = [r.get("robust_per_image") for r in recs]
        if all(rows) and len({len(v) for v in rows}) == 1 and rows[0]:
            n = len(rows[0])
            robust = sum(all(v[i] for v in rows) for i in range(n)) / n
        else:
            robust = per_attack[strongest]
        out.append({"run": run, "norm": norm, "direction": direction, "eps": eps, "eps_label": eps_label(eps),
                    "clean_accuracy": recs[0]["clean_accuracy"], "robust_accuracy": robust,
                    "strongest_attack": strongest, "strongest_robust_accuracy": per_attack[strongest],
                    "attacks_run": list(per_attack), "per_attack": per_attack,
                    "randomized_model": any(r.get("randomized_model") for r in recs)})
    return out


@dataclass
class WhiteboxJob:
    """What to run: attack names x eps values, in one norm, with per-attack constructor kwargs."""

    attacks: Sequence[str]
    eps: Sequence[float]
    norm: Norm = Norm.LINF
    batch_size: int = 128
    seed: int = 0
    direction: str = "both"
    attack_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    eot_samples: int = 16  # draws averaged per forward pass when the model is randomised (EOT)


def run_whitebox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, job: WhiteboxJob, *,
                 positive_class: int | None = None, store: RecordStore | None = None,
                 meta: dict[str, Any] | None = None, identity: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every attack x eps of ``job`` on ``(x, y)``; returns records (and keeps them in ``store``).

    ``identity`` (the model's fingerprint and the data's, see :mod:`medshield.evaluation.identity`):
    each stored record is reused only when it came from the same model, images, attack, parameters,
    eps and seed; otherwise ``store`` refuses it with the difference named (or recomputes it).

    A randomised model (two forward passes disagree) is attacked through :class:`ExpectationModel`
    (EOT over ``job.eot_samples`` draws; ``queries`` count every draw) and the adversarials are judged
    by one fresh draw of the model itself, as the clean accuracy is; records say so
    (``randomized_model``, ``eot_samples``)."""
    meta = dict(meta or {})
    idx = select_direction(y, job.direction, positive_class)
    x, y = x[idx], y[idx]
    clean_logits = predict(model, x)
    base_checks = model_checks(model, x[:16].to(model_device(model)), y[:16])
    randomized = not base_checks["randomised_model"]["ok"]
    target = ExpectationModel(model, job.eot_samples) if randomized else model
    draws = job.eot_samples if randomized else 1
    tag = meta.get("run", "model")
    records, raw_cache = [], {}
    total = len(job.attacks) * len(job.eps) * x.shape[0]
    with eval_mode(model), progress_bar(f"white-box {tag}", total) as advance:
        for name in job.attacks:
            attack = create_attack(name, norm=job.norm, **job.attack_kwargs.get(name, {}))
            for eps in job.eps:
                key = f"{tag}|{name}|{job.norm}|{job.direction}|{eps:.8g}" + (f"|eot{draws}" if randomized else "")

                def compute(attack: Attack = attack, eps: float = eps, name: str = name) -> dict[str, Any]:
                    extra: dict[str, Any] = {}
                    if isinstance(attack, MinimizationAttack):
                        if name not in raw_cache:
                            raw_cache[name] = run_batched(attack, target, x, y, None, job.batch_size, job.seed)
                        result = rebudget(attack, target, x, y, raw_cache[name], eps, job.norm, job.batch_size)
                        extra["min_distance_per_image"] = minimal_distances(raw_cache[name], attack.norm)
                        extra["distance_norm"] = str(attack.norm)
                    else:
                        result = run_batched(attack, target, x, y, eps, job.batch_size, job.seed)
                    if randomized:  # every draw is a model query; judge by one fresh draw of the model itself
                        result = replace(result, queries=result.queries * draws,
                                         logits=predict(model, result.adversarial))
                    rec = summarise(result, x, y, clean_logits, positive_class, eps, job.norm)
                    rec["checks"] = merge_checks(base_checks, rec["checks"])
                    return {**meta, "attack": name, "eps": eps, "eps_label": eps_label(eps), "norm": str(job.norm),
                            "direction": job.direction, "attack_config": repr(attack), "randomized_model": randomized,
                            "eot_samples": draws, **rec, **extra}

                inputs = None if identity is None else job_identity(
                    **identity, attack=name, attack_config=repr(attack), eps=eps, norm=str(job.norm),
                    direction=job.direction, seed=job.seed, batch_size=job.batch_size, eot_samples=draws)
                rec = store.get_or_run(key, compute, inputs) if store is not None else compute()
                records.append(rec)
                advance(x.shape[0], info=f"{name} eps={eps_label(eps)} robust={rec['robust_accuracy']:.3f}")
    return records


# ---- example images for the report's grid (stored, so a report never re-runs an attack) ----

GRID_ATTACKS = ("pgd", "mifgsm", "bim", "fgsm")
GRID_EPS = 2 / 255
GRID_EXAMPLES = "grid_examples.npz"
"""The file (next to the records) that holds the grid's example images, one set per model."""
EXAMPLE_ARRAYS = ("original", "adversarial", "clean_probs", "adv_probs", "labels")


def grid_choice(attacks: Sequence[str], eps: Sequence[float]) -> tuple[str, float]:
    """The grid's attack and eps: the strongest listed gradient attack at the eps closest to 2/255."""
    name = next((a for a in GRID_ATTACKS if a in attacks), attacks[0])
    return name, min(eps, key=lambda e: abs(e - GRID_EPS))


def grid_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, eps: float, norm: Norm, seed: int,
                  class_names: Sequence[str] | None = None, per_class: int = 2, pool: int = 16) -> dict[str, Any] | None:
    """``per_class`` images per class for the report's grid under attack ``name`` at ``eps``, among the
    images the model classifies correctly before the attack (an image it already gets wrong is no
    adversarial example), successful adversarials first (picked from the first ``pool`` of each class):
    originals, adversarials, labels and both predictions, plus what made them (attack, eps, norm, class
    names). None when the model gets none of the images right."""
    correct = predict_labels(predict(model, x)) == y
    idx = torch.cat([((y == c) & correct).nonzero().squeeze(1)[:pool] for c in y.unique()])
    if idx.numel() == 0:
        return None
    device = model_device(model)
    res = create_attack(name, norm=norm).attack(model, x[idx].to(device), y[idx].to(device), eps=eps,
                                               generator=torch.Generator(device=device).manual_seed(seed))
    order = torch.argsort((~res.success.cpu()).int(), stable=True)  # successes first
    pick = torch.cat([order[y[idx][order] == c][:per_class] for c in y[idx].unique()])
    xs, adv = x[idx][pick], res.adversarial.cpu()[pick]
    return {"attack": name, "eps": eps, "norm": str(norm), "class_names": list(class_names or []),
            "original": xs, "adversarial": adv, "labels": y[idx][pick],
            "clean_probs": probabilities(predict(model, xs)), "adv_probs": probabilities(predict(model, adv))}


def save_grid_examples(path: str | Path, examples: Mapping[str, Mapping[str, Any] | None]) -> Path:
    """Write ``{run: examples}`` to one compressed ``.npz`` (arrays as float32/int64, the rest as JSON)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {}
    for run, ex in examples.items():
        if not ex:
            continue
        for key in EXAMPLE_ARRAYS:  # records stored as JSON turn a one-image label vector into a number
            value = torch.as_tensor(ex[key]).cpu()
            arrays[f"{run}/{key}"] = (value.reshape(-1) if key == "labels" else value).numpy()
        meta[run] = {k: v for k, v in ex.items() if k not in EXAMPLE_ARRAYS}
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_grid_examples(path: str | Path) -> dict[str, dict[str, Any]]:
    """The examples :func:`save_grid_examples` wrote (tensors again); ``{}`` when there is no file."""
    path = Path(path)
    if not path.is_file():
        return {}
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return {run: {**info, **{k: torch.from_numpy(data[f"{run}/{k}"]) for k in EXAMPLE_ARRAYS}}
                for run, info in meta.items()}
