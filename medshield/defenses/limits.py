"""Query limits for a deployed classifier: a per-client total budget plus a token-bucket rate limit.

Independent of HTTP, so the HTTP server and the in-process label oracle enforce the same rules.

>>> limiter = QueryLimiter(budget=1000, rate=50.0)
>>> decision = limiter.acquire("client-a", n=32)
>>> decision.allowed, decision.remaining
(True, 968)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]


@dataclass(frozen=True)
class LimitDecision:
    """Whether ``n`` queries were granted. ``reason`` is ``"budget"`` (total budget spent; waiting
    does not help), ``"rate"`` (retry after ``retry_after`` seconds) or ``"burst"`` (a single request
    larger than the bucket can ever hold; split it). Denied requests consume nothing."""

    allowed: bool
    used: int
    remaining: int | None
    reason: Literal["budget", "rate", "burst"] | None = None
    retry_after: float | None = None

    def message(self) -> str:
        if self.allowed:
            return "allowed"
        if self.reason == "budget":
            return f"query budget exhausted ({self.used} queries used, {self.remaining} remaining)"
        if self.reason == "burst":
            return "request holds more images than the rate limit's burst size; send smaller batches"
        return f"rate limit exceeded; retry after {self.retry_after:.2f} s"


@dataclass
class _ClientState:
    used: int = 0
    tokens: float = 0.0
    stamp: float = 0.0


class QueryLimiter:
    """Per-client total query budget and token-bucket rate limit; thread-safe.

    ``budget``: total queries a client may ever make (``None``: unlimited). ``rate``: sustained
    queries per second (``None``: unlimited) with a bucket of ``burst`` tokens (default
    ``max(rate, 1)``). A batch of ``n`` images costs ``n`` queries. ``clock`` is injectable for tests.
    """

    def __init__(self, budget: int | None = None, rate: float | None = None, burst: float | None = None,
                 clock: Clock = time.monotonic) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of queries per second, got {rate}")
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.budget = budget
        self.rate = rate
        self.burst = float(burst if burst is not None else max(rate or 1.0, 1.0))
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _ClientState] = {}

    def _state(self, client: str) -> _ClientState:
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _ClientState(tokens=self.burst, stamp=self.clock())
        return state

    def _remaining(self, state: _ClientState) -> int | None:
        return None if self.budget is None else max(self.budget - state.used, 0)

    def acquire(self, client: str, n: int = 1) -> LimitDecision:
        """Grant and consume ``n`` queries for ``client``, or deny without consuming anything."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._lock:
            state = self._state(client)
            if self.budget is not None and state.used + n > self.budget:
                return LimitDecision(False, state.used, self._remaining(state), "budget")
            if self.rate is not None:
                now = self.clock()
                state.tokens = min(self.burst, state.tokens + (now - state.stamp) * self.rate)
                state.stamp = now
                if n > self.burst:
                    return LimitDecision(False, state.used, self._remaining(state), "burst")
                if state.tokens < n:
                    wait = (n - state.tokens) / self.rate
                    return LimitDecision(False, state.used, self._remaining(state), "rate", wait)
                state.tokens -= n
            state.used += n
            return LimitDecision(True, state.used, self._remaining(state))

    def used(self, client: str) -> int:
        with self._lock:
            state = self._clients.get(client)
            return state.used if state else 0

    def remaining(self, client: str) -> int | None:
        with self._lock:
            state = self._clients.get(client)
            return self._remaining(state) if state else self.budget
