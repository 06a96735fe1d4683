"""Per-finding evaluation of a multi-label classifier: clean metrics per finding, white-box "hide one
finding" / "add one finding" attacks that must leave the others unchanged, and label-only attacks on
the findings' decisions. Every function returns JSON records (numbers as numbers); reports render them.

Record fields (one record per finding x mode x eps, or x budget):

- white-box: ``kind="multilabel_whitebox"``, ``attack`` (``finding_pgd``), ``finding`` (name),
  ``finding_index``, ``mode`` (``hide``/``add``), ``norm``, ``eps``, ``n`` (images attacked: those where
  the model reports the finding, for hide; where it does not, for add), ``success_rate`` (finding flipped
  *and* all others unchanged), ``flip_rate`` (finding flipped, whatever the others did),
  ``others_unchanged_rate`` (all other findings unchanged in the returned image, over the ``n`` images),
  ``others_unchanged_given_flip`` (the same among the images whose finding flipped; null if none),
  ``mean_linf``, ``mean_l2`` (over successes; null if none), ``seconds``.
- label-only: ``kind="multilabel_blackbox"``, ``attack`` (``hsja``...), ``finding``, ``finding_index``,
  ``mode``, ``norm``, ``budget``, ``n``, ``success_rate``, ``median_l2`` (over successes), ``flip_rate``,
  ``others_unchanged_rate``, ``others_unchanged_given_flip``, ``mean_queries``, ``keep_others`` (whether
  the oracle demanded the others held; failures return the original image), ``l2_per_image`` (each
  attacked image's L2 where it succeeded, else null).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS
from medshield.attacks.multilabel import (
    FindingAttack, code_starts, codes, decision_code_fn, decision_fn, finding_label_fn, wanted_decisions,
)
from medshield.models.metrics import multilabel_metrics
from medshield.models import predict
from medshield.types import Norm

MODES = ("hide", "add")


@dataclass
class FindingAttackConfig:
    """Settings of the per-finding attacks (white-box eps in [0, 1] pixels; label-only budgets in queries)."""

    eps: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255])
    modes: tuple[str, ...] = MODES
    norm: str = "linf"
    steps: int = 20
    rel_stepsize: float = 0.1
    keep_weight: float = 10.0
    margin: float = 1.0
    budgets: list[int] = field(default_factory=lambda: [500, 1000])
    blackbox_attack: str = "hsja"
    keep_others: bool = True
    seed: int = 0


def clean_finding_metrics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                          thresholds: Sequence[float] | float = 0.5, n_bootstrap: int = 1000,
                          seed: int = 0) -> dict[str, Any]:
    """:func:`~medshield.models.metrics.multilabel_metrics` of a logits model on ``images``."""
    probs = torch.sigmoid(predict(model, images))
    return multilabel_metrics(labels, probs, names, list(thresholds) if not isinstance(thresholds, (int, float))
                              else float(thresholds), n_bootstrap, seed)


def _mean(values: torch.Tensor) -> float | None:
    return float(values.float().mean()) if values.numel() else None


def attack_cases(decisions: torch.Tensor, names: list[str], modes: Sequence[str],
                 only: Sequence[int] | None = None) -> Iterator[tuple[int, str, str, torch.Tensor]]:
    """``(finding index, name, mode, rows)`` for every finding (or those ``only``) and mode with images
    to attack: ``hide`` takes the rows where the finding is present, ``add`` those where it is absent."""
    for k, name in enumerate(names):
        if only is not None and k not in only:
            continue
        for mode in modes:
            rows = torch.nonzero(decisions[:, k] == (1 if mode == "hide" else 0)).squeeze(1)
            if rows.numel():
                yield k, name, mode, rows


def finding_whitebox_records(model: nn.Module, images: torch.Tensor, names: list[str],
                             thresholds: Sequence[float] | float, cfg: FindingAttackConfig,
                             only: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Hide/add each finding (or the findings ``only``) with :class:`FindingAttack` at every eps; one
    record per finding x mode x eps."""
    decisions = decision_fn(model, thresholds)(images)
    records = []
    for k, name, mode, rows in attack_cases(decisions, names, cfg.modes, only):
        attack = FindingAttack(k, mode, thresholds, cfg.norm, cfg.steps, cfg.rel_stepsize, cfg.keep_weight,
                               cfg.margin)
        for eps in cfg.eps:
            res = attack.attack(model, images[rows], decisions[rows], eps=eps,
                                generator=torch.Generator().manual_seed(cfg.seed))
            ok = res.success
            records.append({
                "kind": "multilabel_whitebox", "attack": FindingAttack.name, "finding": name, "finding_index": k,
                "mode": mode, "norm": str(Norm.parse(cfg.norm)), "eps": float(eps), "n": int(rows.numel()),
                "success_rate": res.success_rate, "flip_rate": _mean(res.extras["flipped"]),
                "others_unchanged_rate": _mean(res.extras["others_unchanged"]),
                "others_unchanged_given_flip": _mean(res.extras["others_unchanged"][res.extras["flipped"]]),
                "mean_linf": _mean(res.linf[ok]), "mean_l2": _mean(res.l2[ok]), "seconds": res.seconds})
    return records


def finding_blackbox_records(label_model: nn.Module, images: torch.Tensor, names: list[str],
                             thresholds: Sequence[float] | float, cfg: FindingAttackConfig,
                             pool: torch.Tensor | None = None, only: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Label-only attacks on each finding's decision (or the findings ``only``); one record per finding x
    mode x budget.

    ``keep_others`` (default): the oracle sees the whole decision vector as a code and the attack is
    targeted at the wanted code (finding flipped, others held), starting from the nearest ``pool``
    image (default ``images``) that shows that code; images with no such start count as failures.
    Otherwise the oracle answers the finding alone (untargeted) and ``others_unchanged_rate`` says
    how often the others survived anyway."""
    pool = images if pool is None else pool
    decide_all = decision_fn(label_model, thresholds)
    decisions = decide_all(images)
    pool_codes = codes(decide_all(pool)) if cfg.keep_others else None
    records = []
    for k, name, mode, rows in attack_cases(decisions, names, cfg.modes, only):
        x, dec = images[rows], decisions[rows]
        wanted = wanted_decisions(dec, k, mode)  # type: ignore[arg-type]
        attack = DECISION_ATTACKS.create(cfg.blackbox_attack, norm=Norm.L2)
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.keep_others:  # the attack's entry point: it builds the oracle and re-checks the results
            starts, _ = code_starts(x, codes(wanted), pool, pool_codes)  # type: ignore[arg-type]
            results = attack(decision_code_fn(label_model, thresholds), x, codes(dec), cfg.budgets,
                             targets=codes(wanted), starts=starts, generator=generator)
        else:
            results = attack(finding_label_fn(label_model, k, thresholds), x, dec[:, k], cfg.budgets,
                             generator=generator)
        for budget, res in results.items():
            after = decide_all(res.adversarial)
            others = torch.ones_like(after, dtype=torch.bool)
            others[:, k] = False
            unchanged = ((after == dec) | ~others).all(1)
            flipped = after[:, k] == wanted[:, k]
            ok = res.success & unchanged & flipped
            records.append({
                "kind": "multilabel_blackbox", "attack": cfg.blackbox_attack, "finding": name, "finding_index": k,
                "mode": mode, "norm": "l2", "budget": int(budget), "n": int(rows.numel()),
                "success_rate": _mean(ok), "median_l2": float(res.l2[ok].median()) if ok.any() else None,
                "flip_rate": _mean(flipped), "others_unchanged_rate": _mean(unchanged),
                "others_unchanged_given_flip": _mean(unchanged[flipped]),
                "mean_queries": _mean(res.queries), "keep_others": cfg.keep_others,
                "l2_per_image": [float(d) if good else None for d, good in zip(res.l2.tolist(), ok.tolist())]})
    return records
