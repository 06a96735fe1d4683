"""The decision-based attack interface: hyperparameters in the constructor; the oracle (model access,
images, budgets) and the random generator at call time."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from medshield.attacks.decision.oracle import LabelFn, LabelOracle, QueryHook
from medshield.attacks.geometry import distance
from medshield.types import AttackResult, Norm

Progress = Callable[[LabelOracle], None]
"""Called once per attack iteration with the oracle (progress bars read ``queries`` and distances)."""


class BudgetResults(Mapping[int, AttackResult]):
    """A decision attack's results: one frozen :class:`AttackResult` per budget checkpoint
    (``results[5000].l2``), plus the finished ``oracle`` (its query counts and best points per budget,
    e.g. for the attacker's claims) and the attack's wall time in ``seconds``."""

    def __init__(self, by_budget: dict[int, AttackResult], oracle: LabelOracle, seconds: float) -> None:
        self._by_budget, self.oracle, self.seconds = dict(by_budget), oracle, seconds

    def __getitem__(self, budget: int) -> AttackResult:
        return self._by_budget[budget]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_budget)

    def __len__(self) -> int:
        return len(self._by_budget)


class DecisionAttack(ABC):
    """A minimisation attack that only sees labels. Hyperparameters are keyword-only constructor
    arguments; the one entry point is ``attack(label_fn, images, labels, budgets, ...)``, which builds
    the query-counting :class:`LabelOracle`, runs :meth:`run` and ends in :func:`results_by_budget`, the
    one place that re-checks the adversarials and decides success. Subclasses implement :meth:`run`,
    which drives the oracle until every image's budget is spent (the oracle keeps the best adversarial
    per budget, so ``run`` returns nothing)."""

    norm: Norm = Norm.L2

    @abstractmethod
    def run(self, oracle: LabelOracle, generator: torch.Generator, starts: torch.Tensor | None = None,
            progress: Progress | None = None) -> None:
        """Attack every image of ``oracle``; ``starts`` are optional adversarial starting images."""

    def __call__(self, label_fn: LabelFn, images: torch.Tensor, labels: torch.Tensor, budgets: Sequence[int], *,
                 targets: torch.Tensor | None = None, starts: torch.Tensor | None = None, seed: int = 0,
                 generator: torch.Generator | None = None, hooks: Sequence[QueryHook] = (),
                 progress: Progress | None = None, cost: int = 1, verify_fn: LabelFn | None = None,
                 start_pool: torch.Tensor | None = None) -> BudgetResults:
        """Run on ``images [N, C, H, W]`` in [0, 1] with per-image query ``budgets``; randomness from
        ``generator`` (default one seeded with ``seed``). ``cost`` model queries are charged per logical
        query (an adaptive attacker's ``k`` repeats); ``verify_fn`` re-checks the final adversarials
        (default: ``label_fn``; a randomised defense's evaluation passes the undefended model).
        ``start_pool [P, C, H, W]``: the attacker's own images, the last resort for a starting point."""
        oracle = LabelOracle(label_fn, images, labels, budgets, targets=targets, norm=self.norm, hooks=hooks,
                             cost=cost, start_pool=start_pool)
        start = time.perf_counter()
        self.run(oracle, generator if generator is not None else torch.Generator().manual_seed(seed), starts=starts,
                 progress=progress)
        seconds = time.perf_counter() - start
        return BudgetResults(results_by_budget(oracle, seconds, verify_fn=verify_fn), oracle, seconds)


def results_by_budget(oracle: LabelOracle, seconds: float, verify_fn: LabelFn | None = None) -> dict[int, AttackResult]:
    """One :class:`AttackResult` per budget checkpoint of a finished oracle. Reported adversarials are
    re-checked with ``verify_fn`` (default: the oracle's own label function); a randomised defense's
    evaluation passes the undefended model here, so success means "fools the classifier itself"."""
    out = {}
    for budget in oracle.budgets:
        adv, dist = oracle.best(budget)
        adv, success, fixed = verify(oracle, adv, torch.isfinite(dist), label_fn=verify_fn)
        out[budget] = AttackResult(
            adversarial=adv, success=success,
            linf=torch.where(success, distance(adv, oracle.images, Norm.LINF), torch.full_like(dist, float("inf"))),
            l2=torch.where(success, distance(adv, oracle.images, Norm.L2), torch.full_like(dist, float("inf"))),
            queries=oracle.queries.clamp(max=budget), seconds=seconds,
            extras={"budget": budget, "batch_calls": oracle.batch_calls, "verify_fixed": fixed})
    return out


def verify(oracle: LabelOracle, adv: torch.Tensor, success: torch.Tensor,
           scales: tuple[float, ...] = (1.0, 1.001, 1.01, 1.1),
           label_fn: LabelFn | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Re-check reported adversarials with ``label_fn`` (default the oracle's; evaluator queries, not
    counted against the attack). Points found within 1e-5 of the boundary can flip when the model sees them in a batch
    of another size (floating-point order); such rows are pushed out along ``adv - x`` by the first of
    ``scales`` that verifies, else reported as failures. Returns ``(adv, success, n_pushed)``."""
    rows = torch.nonzero(success).squeeze(1)
    x0 = oracle.images
    adv, success, pushed = adv.clone(), success.clone(), 0
    for k, scale in enumerate(scales):
        if rows.numel() == 0:
            break
        cand = (x0[rows] + scale * (adv[rows] - x0[rows])).clamp(0, 1)
        pred = (label_fn or oracle.label_fn)(cand).long().cpu()
        ok = oracle.fools(rows, pred)
        adv[rows[ok]] = cand[ok]
        pushed += int(ok.sum()) if k else 0
        rows = rows[~ok]
    success[rows] = False
    adv[rows] = x0[rows]
    return adv, success, pushed


def active_rows(active: torch.Tensor, oracle: LabelOracle) -> torch.Tensor:
    """Indices of images still being attacked (active and with queries left)."""
    return torch.nonzero(active & ~oracle.exhausted).squeeze(1)
