"""QueryLimiter: budgets, token-bucket rate limits, thread safety; all on an injected clock."""

from __future__ import annotations

import threading

import pytest

from medshield.defenses.limits import QueryLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_counts_batches_and_denies_without_consuming() -> None:
    limiter = QueryLimiter(budget=10)
    assert limiter.acquire("a", 6).allowed
    denied = limiter.acquire("a", 5)
    assert not denied.allowed and denied.reason == "budget" and denied.retry_after is None
    assert denied.remaining == 4 and limiter.used("a") == 6
    assert limiter.acquire("a", 4).remaining == 0
    assert not limiter.acquire("a", 1).allowed
    assert limiter.acquire("b", 10).allowed  # budgets are per client
    assert limiter.remaining("never-seen") == 10


def test_rate_limit_refills_with_time_and_says_when() -> None:
    clock = FakeClock()
    limiter = QueryLimiter(rate=10.0, burst=5, clock=clock)
    assert limiter.acquire("a", 5).allowed
    denied = limiter.acquire("a", 3)
    assert not denied.allowed and denied.reason == "rate"
    assert denied.retry_after == pytest.approx(0.3)
    clock.now = 0.2
    assert not limiter.acquire("a", 3).allowed
    clock.now = 0.3
    assert limiter.acquire("a", 3).allowed
    clock.now = 100.0  # refill caps at the burst size
    assert limiter.acquire("a", 5).allowed and not limiter.acquire("a", 1).allowed


def test_batch_larger_than_burst_is_refused_as_burst() -> None:
    limiter = QueryLimiter(rate=1.0, burst=4, clock=FakeClock())
    decision = limiter.acquire("a", 5)
    assert not decision.allowed and decision.reason == "burst" and "smaller batches" in decision.message()


def test_unlimited_by_default_and_bad_arguments() -> None:
    limiter = QueryLimiter()
    assert limiter.acquire("a", 10**6).allowed and limiter.remaining("a") is None
    for kwargs in ({"budget": -1}, {"rate": 0.0}, {"rate": float("inf")}, {"burst": 0.5}):
        with pytest.raises(ValueError):
            QueryLimiter(**kwargs)
    with pytest.raises(ValueError):
        limiter.acquire("a", -1)


def test_thread_safe_budget_is_never_overspent() -> None:
    limiter = QueryLimiter(budget=1000)
    granted = []

    def worker() -> None:
        for _ in range(300):
            if limiter.acquire("a", 1).allowed:
                granted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 1000 and limiter.used("a") == 1000
