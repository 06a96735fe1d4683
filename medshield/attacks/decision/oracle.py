"""The label-only oracle every decision-based attack talks to.

It answers "is this point adversarial?" for batches of queries from many images at once, counts every
query per image (initialisation and binary searches included), never lets an image exceed its budget,
and keeps the best adversarial found within each budget checkpoint, so one run yields every budget.
Scores and gradients never leave it: the attack sees booleans only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medshield.attacks.geometry import distance
from medshield.models import eval_mode, model_device, predict_labels
from medshield.models.inference import LAYOUTS, chunks, forward_choice, is_stochastic, path_forward, sends_queries
from medshield.types import Norm

LabelFn = Callable[[torch.Tensor], torch.Tensor]
"""A batched label function: images ``[M, C, H, W]`` in [0, 1] -> predicted labels ``int64 [M]``.

Anything that answers labels fits: a local model, a defended model (noise wrappers), a remote service."""

QueryHook = Callable[[torch.Tensor, torch.Tensor], None]
"""Called with ``(image_index [M], queries [M, C, H, W])`` before each batch is answered (detectors, logs)."""


def model_label_fn(model: nn.Module, batch_size: int | None = None, layout: str = "auto") -> LabelFn:
    """A :data:`LabelFn` over a local model: eval mode, inference mode, chunks of ``batch_size`` rows;
    works for 1-logit (sigmoid) and multi-logit models through :func:`medshield.models.predict_labels`.

    ``batch_size=None`` picks the chunk from a measured sweep
    (:func:`medshield.models.inference.forward_choice`, once per row shape); a fixed ``batch_size`` skips
    the sweep (a one-off pass). Neither sends a local deterministic model chunks under 8 rows, which
    keeps every label as one big batch gives it. ``layout="auto"`` also takes the memory
    layout from that measurement (channels-last only where it was faster with identical labels on the
    probe, the first call's rows included); channels-last logits can differ from contiguous ones in the
    last bit, so a result that must be byte-reproducible across processes pins ``"contiguous"`` (the
    campaign does) or ``"channels_last"``. ``"frozen"`` pins the faster frozen inference graph
    (:class:`medshield.models.inference.Frozen`), whose labels can differ from the module's at boundary
    points: check adversarials found through it with it. A model that draws its own noise per call (a randomised
    defense) keeps one contiguous call per 4096 rows, so its draws stay as they were, and a remote model
    (:func:`sends_queries`) is never swept and always gets the caller's rows: probes would spend the
    service's budget."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    device = model_device(model)
    remote, stochastic = sends_queries(model), is_stochastic(model)
    fixed = batch_size or (4096 if stochastic or remote else None)
    pinned = layout if layout in ("channels_last", "frozen") and not remote and not stochastic else "contiguous"
    forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}  # one copy per path and label function

    def forward_for(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if path not in forwards:
            forwards[path] = path_forward(model, path)
        return forwards[path]

    def labels(x: torch.Tensor) -> torch.Tensor:
        if fixed:  # a noisy or remote model gets exactly these calls; a local one never a chunk under 8 rows
            parts = x.split(fixed) if stochastic or remote else chunks(x, fixed)
            forward = forward_for(pinned if x.ndim == 4 else "contiguous")
        else:
            path = pinned if layout != "auto" and x.ndim == 4 else "contiguous"
            choice = forward_choice(model, x.shape[1:], probe=x[:256], layouts=layout == "auto", path=path,
                                    forward=None if path == "contiguous" else forward_for(path))
            forward, parts = forward_for(choice.layout if layout == "auto" else path), chunks(x, choice.batch)
        with eval_mode(model), torch.inference_mode():
            out = [predict_labels(forward(chunk.to(device))).cpu() for chunk in parts]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    return labels


def majority_vote(label_fn: LabelFn, k: int) -> LabelFn:
    """An adaptive attacker's label function: each query is sent ``k`` times (one batched call of
    ``k * M`` rows, so a randomised defense draws fresh noise for every copy) and the most frequent
    label wins (ties go to the smaller label; use odd ``k``). This is the expectation-over-transformation
    answer to noisy-query defenses (Athalye et al. 2018; Qin et al. 2021, sec. 5). Pair it with
    ``LabelOracle(cost=k)`` so every copy counts against the budget."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k == 1:
        return label_fn

    def vote(x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        if m == 0:
            return torch.empty(0, dtype=torch.long)
        labels = label_fn(x.repeat(k, *([1] * (x.ndim - 1)))).long().cpu().reshape(k, m)
        counts = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).sum(0)
        return counts.argmax(1)

    return vote


class LabelOracle:
    """Label-only access to a classifier for ``N`` images, with per-image query budgets.

    ``query(idx, x)`` answers whether each ``x[j]`` (a candidate for image ``idx[j]``) is adversarial:
    misclassified (untargeted) or classified as ``targets[idx[j]]`` (targeted). Queries past an image's
    budget are not sent to the model and read as "not adversarial", so an attack can never profit from
    them; ``exhausted`` tells the attack to stop. Every adversarial answer is a verified candidate; the
    oracle keeps, for each budget ``b``, the closest one found within the image's first ``b`` queries.

    Example:
        oracle = LabelOracle(model_label_fn(model), x, y, budgets=[1000, 5000])
        HopSkipJump().run(oracle, torch.Generator().manual_seed(0))
        adv, l2 = oracle.best(5000)
    """

    def __init__(
        self,
        label_fn: LabelFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        budgets: Sequence[int],
        targets: torch.Tensor | None = None,
        norm: Norm | str = Norm.L2,
        hooks: Sequence[QueryHook] = (),
        max_batch: int = 8192,
        cost: int = 1,
        start_pool: torch.Tensor | None = None,
    ) -> None:
        budgets = sorted({int(b) for b in budgets})
        if not budgets or budgets[0] < 1:
            raise ValueError(f"budgets must be positive query counts, got {list(budgets)}")
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)} and {tuple(labels.shape)}")
        if cost < 1:
            raise ValueError(f"cost must be >= 1 model query per logical query, got {cost}")
        self.label_fn, self.hooks, self.max_batch, self.cost = label_fn, tuple(hooks), max_batch, int(cost)
        self.images = images.detach().clone().float()
        self.labels = labels.detach().clone().long()
        self.targets = None if targets is None else targets.detach().clone().long()
        # the attacker's own images (e.g. of every class), tried as starting points where neither noise
        # nor the other attacked images are adversarial (one class in a shard); queries are charged
        self.start_pool = None if start_pool is None else start_pool.detach().clone().float()
        self.norm = Norm.parse(norm)
        self.budgets = budgets
        self.max_budget = budgets[-1]
        n = images.shape[0]
        self.queries = torch.zeros(n, dtype=torch.long)
        self.best_dist = torch.full((n, len(budgets)), float("inf"))
        self.best_x = self.images.unsqueeze(1).repeat(1, len(budgets), 1, 1, 1)
        self.batch_calls = 0

    @property
    def n(self) -> int:
        return self.images.shape[0]

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    @property
    def remaining(self) -> torch.Tensor:
        return self.max_budget - self.queries

    @property
    def exhausted(self) -> torch.Tensor:
        """Images that cannot afford another (logical) query."""
        return self.queries + self.cost > self.max_budget

    def current_best(self) -> torch.Tensor:
        """Best distance so far per image (inf where no adversarial has been found)."""
        return self.best_dist[:, -1]

    def fools(self, idx: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``bool [M]``: is label ``pred[j]`` adversarial for image ``idx[j]`` (differs from its label,
        or equals its target)?"""
        return pred == self.targets[idx] if self.targeted else pred != self.labels[idx]

    def query(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``bool [M]``: is ``x[j]`` adversarial for image ``idx[j]``? One batched label call."""
        idx = idx.long().reshape(-1)
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        x = x.reshape(idx.numel(), *self.images.shape[1:]).clamp(0, 1)
        seq = self._sequence_numbers(idx)
        ok = seq <= self.max_budget
        adv = torch.zeros(idx.numel(), dtype=torch.bool)
        if ok.any():
            sent_idx, sent_x = idx[ok], x[ok]
            for hook in self.hooks:
                hook(sent_idx, sent_x)
            pred = torch.cat([self.label_fn(c) for c in sent_x.split(self.max_batch)]).long().cpu()
            self.batch_calls += 1
            hit = self.fools(sent_idx, pred)
            adv[ok] = hit
            self._record(sent_idx, sent_x, seq[ok], hit)
        self.queries += torch.bincount(idx[ok], minlength=self.n) * self.cost
        return adv

    def _sequence_numbers(self, idx: torch.Tensor) -> torch.Tensor:
        """Model-query count of each image once row's (logical) query is answered (earlier rows first)."""
        order = torch.argsort(idx, stable=True)
        sorted_idx = idx[order]
        first = torch.ones_like(sorted_idx, dtype=torch.bool)
        first[1:] = sorted_idx[1:] != sorted_idx[:-1]
        pos = torch.arange(idx.numel())
        start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), dim=0).values
        rank = torch.empty_like(pos)
        rank[order] = pos - start + 1
        return self.queries[idx] + rank * self.cost

    def _record(self, idx: torch.Tensor, x: torch.Tensor, seq: torch.Tensor, hit: torch.Tensor) -> None:
        if not hit.any():
            return
        idx, x, seq = idx[hit], x[hit], seq[hit]
        dist = distance(x, self.images[idx], self.norm)
        for k, budget in enumerate(self.budgets):
            within = seq <= budget
            if not within.any():
                continue
            d = torch.where(within, dist, torch.full_like(dist, float("inf")))
            best = torch.full((self.n,), float("inf")).scatter_reduce(0, idx, d, "amin")
            improve = best < self.best_dist[:, k]
            if not improve.any():
                continue
            rows = torch.nonzero(within & improve[idx] & (d == best[idx])).squeeze(1)
            self.best_x[idx[rows], k] = x[rows]
            self.best_dist[idx[rows], k] = d[rows]

    def best(self, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The closest adversarial found within ``budget`` queries per image, and its distance
        (the original image and inf where none was found)."""
        if budget not in self.budgets:
            raise ValueError(f"budget {budget} is not a checkpoint of this oracle ({self.budgets})")
        k = self.budgets.index(budget)
        return self.best_x[:, k].clone(), self.best_dist[:, k].clone()
