"""Stateful detection of black-box attack query streams.

In the spirit of Chen, Carlini & Wagner (2020), "Stateful detection of black-box adversarial
attacks": decision-based attacks (HSJA, GBBA, OPT, ...) send many near-duplicate queries around
one image, while benign clients send distinct images. Each client's recent queries are kept as
compact features (the image average-pooled to ``feature_size``², scaled to unit RMS range); a
query whose mean distance to its ``k`` nearest earlier queries falls below ``threshold`` is
suspicious, and a client is flagged once ``flag_after`` queries were suspicious. ``calibrate``
sets the threshold at a target false-positive rate on a benign stream.

>>> detector = StreamDetector(k=10).calibrate(train_images, fpr=0.001)
>>> verdict = detector.observe("client-a", queries)   # verdict.flagged, verdict.queries_seen
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Verdict:
    """The detector's answer after a client's batch."""

    flagged: bool
    queries_seen: int
    suspicious: int
    flagged_at: int | None  # the query count at which the client was first flagged
    min_distance: float


@dataclass
class _ClientState:
    bank: torch.Tensor | None = None  # ring buffer [history, dim]
    stored: int = 0
    seen: int = 0
    suspicious: int = 0
    flagged_at: int | None = None

    def recent(self) -> torch.Tensor:
        if self.bank is None:
            return torch.empty(0, 0)
        return self.bank[: min(self.stored, self.bank.shape[0])]


class StreamDetector:
    """k-NN near-duplicate detector over each client's recent queries (thread-safe)."""

    def __init__(self, k: int = 10, threshold: float = 0.02, feature_size: int = 16, history: int = 5000,
                 flag_after: int = 1) -> None:
        if k < 1 or history < k or flag_after < 1:
            raise ValueError("need k >= 1, history >= k and flag_after >= 1")
        self.k, self.threshold, self.feature_size = k, threshold, feature_size
        self.history, self.flag_after = history, flag_after
        self._clients: dict[str, _ClientState] = {}
        self._lock = threading.Lock()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled, flattened images; distances are RMS per pixel."""
        x = images.detach().float().cpu()
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = F.adaptive_avg_pool2d(x, self.feature_size) if x.shape[-1] > self.feature_size else x
        return x.flatten(1) / x[0].numel() ** 0.5

    def knn_distance(self, feats: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """Mean distance of each row of ``feats`` to its k nearest rows in ``bank`` (inf if too few)."""
        if bank.shape[0] < self.k:
            return torch.full((feats.shape[0],), float("inf"))
        d = torch.cdist(feats, bank)
        return d.topk(self.k, dim=1, largest=False).values.mean(1)

    def observe(self, client: str, images: torch.Tensor) -> Verdict:
        """Score a batch of one client's queries in order (each against everything sent before it,
        earlier queries of the same batch included), then remember them."""
        feats = self.features(images)
        n = feats.shape[0]
        with self._lock:
            state = self._clients.setdefault(client, _ClientState())
            if state.bank is None:
                state.bank = torch.empty(self.history, feats.shape[1])
            earlier = torch.cdist(feats, feats).masked_fill_(
                torch.ones(n, n, dtype=torch.bool).triu(), float("inf"))
            past = state.recent()
            d = torch.cat([torch.cdist(feats, past), earlier], 1) if past.numel() else earlier
            known = past.shape[0] + torch.arange(n)  # how many earlier queries each one has
            kth = d.topk(min(self.k, d.shape[1]), dim=1, largest=False).values.mean(1)
            kth = torch.where(known >= self.k, kth, torch.full_like(kth, float("inf")))
            for i, hit in enumerate((kth < self.threshold).tolist()):
                if hit:
                    state.suspicious += 1
                    if state.flagged_at is None and state.suspicious >= self.flag_after:
                        state.flagged_at = state.seen + i + 1
            state.seen += n
            for f in feats[-self.history :]:
                state.bank[state.stored % self.history] = f
                state.stored += 1
            min_d = float(kth.min()) if n else float("inf")
            return Verdict(state.flagged_at is not None, state.seen, state.suspicious, state.flagged_at, min_d)

    def export_state(self, client: str, since: int = 0) -> tuple[dict[str, int | None], dict[int, torch.Tensor]] | None:
        """``(counters, rows)`` of a client for a persistent store: its counters and the feature rows
        written after the first ``since`` stored queries (ring-buffer slot -> row); None if unknown."""
        with self._lock:
            state = self._clients.get(client)
            if state is None or state.bank is None:
                return None
            first = max(since, state.stored - self.history)
            rows = {k % self.history: state.bank[k % self.history].clone() for k in range(first, state.stored)}
            counters = {"stored": state.stored, "seen": state.seen, "suspicious": state.suspicious,
                        "flagged_at": state.flagged_at, "dim": int(state.bank.shape[1])}
            return counters, rows

    def import_state(self, client: str, counters: dict[str, int | None] | None, rows: dict[int, torch.Tensor]) -> None:
        """Replace a client's history by a stored one (``counters`` None: forget the client)."""
        with self._lock:
            if counters is None:
                self._clients.pop(client, None)
                return
            bank = torch.empty(self.history, int(counters["dim"] or 0))
            for slot, row in rows.items():
                if 0 <= slot < self.history:
                    bank[slot] = torch.as_tensor(row, dtype=torch.float32)
            self._clients[client] = _ClientState(bank, int(counters["stored"] or 0), int(counters["seen"] or 0),
                                                 int(counters["suspicious"] or 0), counters["flagged_at"])

    def reset(self, client: str | None = None) -> None:
        with self._lock:
            if client is None:
                self._clients.clear()
            else:
                self._clients.pop(client, None)

    def calibrate(self, benign: torch.Tensor, fpr: float = 0.001) -> StreamDetector:
        """Set ``threshold`` to the ``fpr`` quantile of k-NN distances within a benign image stream."""
        feats = self.features(benign)
        d = torch.cdist(feats, feats)
        d.fill_diagonal_(float("inf"))
        knn = d.topk(self.k, dim=1, largest=False).values.mean(1)
        self.threshold = float(torch.quantile(knn, fpr))
        return self
