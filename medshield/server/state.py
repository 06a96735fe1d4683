"""Service state that outlives a process: key budgets and rate buckets, blocks, detector history, audit log.

Three backends behind one small interface:

- :class:`MemoryState` (tests, throwaway servers): one process, lost on restart;
- :class:`SQLiteState` (default of ``medshield serve``): an embedded SQLite database in WAL mode that
  restarts and several worker processes on one host share; every budget decision is one
  ``BEGIN IMMEDIATE`` transaction, so two workers never grant the same query twice;
- :class:`RedisState` (``--state redis://host:port``): several hosts share one Redis; budget
  decisions are one Lua script (atomic on the server).

>>> state = open_state("medshield-state.db")
>>> state.acquire("key-id", 4, LimitPolicy(budget=100)).remaining
96
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medshield.defenses.limits import LimitDecision
from medshield.errors import MedShieldError

Clock = Callable[[], float]


@dataclass(frozen=True)
class LimitPolicy:
    """Per-key total ``budget`` (None: unlimited) and token bucket (``rate`` per second, ``burst``)."""

    budget: int | None = None
    rate: float | None = None
    burst: float = 1.0


@dataclass
class Bucket:
    used: int = 0
    tokens: float | None = None  # None: a full bucket (a key never seen)
    stamp: float = 0.0


def decide(bucket: Bucket, n: int, policy: LimitPolicy, now: float, consume: bool = True) -> LimitDecision:
    """Grant ``n`` queries from ``bucket`` (updated in place when granted and ``consume``) or deny."""
    remaining = None if policy.budget is None else max(policy.budget - bucket.used, 0)
    if policy.budget is not None and bucket.used + n > policy.budget:
        return LimitDecision(False, bucket.used, remaining, "budget")
    tokens = policy.burst if bucket.tokens is None else bucket.tokens
    if policy.rate is not None:
        tokens = min(policy.burst, tokens + max(now - bucket.stamp, 0.0) * policy.rate) \
            if bucket.tokens is not None else tokens
        if n > policy.burst:
            return LimitDecision(False, bucket.used, remaining, "burst")
        if tokens < n:
            return LimitDecision(False, bucket.used, remaining, "rate", (n - tokens) / policy.rate)
        tokens -= n
    if consume:
        bucket.used += n
        bucket.tokens, bucket.stamp = tokens, now
    used = bucket.used if consume else bucket.used + n
    return LimitDecision(True, used, None if policy.budget is None else max(policy.budget - used, 0))


@dataclass
class DetectorRecord:
    """A key's detector history as stored: counters and feature rows by ring-buffer slot."""

    counters: dict[str, Any]
    rows: dict[int, np.ndarray]


class State:
    """The interface every backend implements (all methods thread-safe)."""

    clock: Clock = time.time

    def acquire(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        """Grant and consume ``n`` queries of ``key``, or deny consuming nothing (atomic)."""
        raise NotImplementedError

    def peek(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        """Whether ``n`` queries would be granted now; consumes nothing."""
        raise NotImplementedError

    def used(self, key: str) -> int:
        raise NotImplementedError

    def blocked(self, key: str) -> str | None:
        """The reason ``key`` is blocked, or None."""
        raise NotImplementedError

    def block(self, key: str, reason: str) -> None:
        raise NotImplementedError

    @contextmanager
    def detector(self, key: str) -> Iterator[DetectorSession]:
        """Exclusive access to ``key``'s detector history (load, then save what changed)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def log(self, record: dict[str, Any]) -> None:
        """Append one audit record."""
        raise NotImplementedError

    def audit_records(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DetectorSession:
    """Load and save one key's detector history inside :meth:`State.detector`."""

    def __init__(self, load: Callable[[], DetectorRecord | None],
                 save: Callable[[dict[str, Any], dict[int, np.ndarray]], None]) -> None:
        self.load, self.save = load, save


class MemoryState(State):
    """Everything in this process (lost on restart). ``clock`` is injectable for tests."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._buckets: dict[str, Bucket] = {}
        self._blocked: dict[str, str] = {}
        self._detector: dict[str, DetectorRecord] = {}
        self._audit: list[dict[str, Any]] = []

    def _decide(self, key: str, n: int, policy: LimitPolicy, consume: bool) -> LimitDecision:
        with self._lock:
            bucket = self._buckets.setdefault(key, Bucket())
            probe = bucket if consume else Bucket(bucket.used, bucket.tokens, bucket.stamp)
            return decide(probe, n, policy, self.clock(), consume)

    def acquire(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        return self._decide(key, n, policy, True)

    def peek(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        return self._decide(key, n, policy, False)

    def used(self, key: str) -> int:
        with self._lock:
            return self._buckets.get(key, Bucket()).used

    def blocked(self, key: str) -> str | None:
        return self._blocked.get(key)

    def block(self, key: str, reason: str) -> None:
        with self._lock:
            self._blocked.setdefault(key, reason)

    @contextmanager
    def detector(self, key: str) -> Iterator[DetectorSession]:
        def save(counters: dict[str, Any], rows: dict[int, np.ndarray]) -> None:
            rec = self._detector.setdefault(key, DetectorRecord({}, {}))
            rec.counters = dict(counters)
            rec.rows.update(rows)

        with self._lock:
            yield DetectorSession(lambda: self._detector.get(key), save)

    def log(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._audit.append(dict(record))

    def audit_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._audit)


SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, used INTEGER NOT NULL DEFAULT 0, tokens REAL,
                                 stamp REAL NOT NULL DEFAULT 0, blocked TEXT);
CREATE TABLE IF NOT EXISTS detector_clients (key_id TEXT PRIMARY KEY, counters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS detector_rows (key_id TEXT NOT NULL, slot INTEGER NOT NULL, feat BLOB NOT NULL,
                                          PRIMARY KEY (key_id, slot));
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL);
"""


class SQLiteState(State):
    """An embedded SQLite database (WAL): shared by restarts and by worker processes on one host.

    One connection per thread; each decision is one ``BEGIN IMMEDIATE`` transaction (writers are
    serialised across processes by SQLite's lock, ``busy_timeout`` waits for it)."""

    def __init__(self, path: str | Path, clock: Clock = time.time, timeout: float = 30.0) -> None:
        self.path, self.clock, self.timeout = Path(path), clock, timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise MedShieldError(f"cannot open the state database {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _decide(self, key: str, n: int, policy: LimitPolicy, consume: bool) -> LimitDecision:
        with self._tx() as db:
            row = db.execute("SELECT used, tokens, stamp FROM keys WHERE key_id=?", (key,)).fetchone()
            bucket = Bucket(*row) if row else Bucket()
            decision = decide(bucket, n, policy, self.clock(), consume)
            if decision.allowed and consume:
                db.execute("INSERT INTO keys (key_id, used, tokens, stamp) VALUES (?, ?, ?, ?) ON CONFLICT(key_id) "
                           "DO UPDATE SET used=excluded.used, tokens=excluded.tokens, stamp=excluded.stamp",
                           (key, bucket.used, bucket.tokens, bucket.stamp))
            return decision

    def acquire(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        return self._decide(key, n, policy, True)

    def peek(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        row = self._conn().execute("SELECT used, tokens, stamp FROM keys WHERE key_id=?", (key,)).fetchone()
        return decide(Bucket(*row) if row else Bucket(), n, policy, self.clock(), consume=False)

    def used(self, key: str) -> int:
        row = self._conn().execute("SELECT used FROM keys WHERE key_id=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def blocked(self, key: str) -> str | None:
        row = self._conn().execute("SELECT blocked FROM keys WHERE key_id=?", (key,)).fetchone()
        return row[0] if row else None

    def block(self, key: str, reason: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO keys (key_id, blocked) VALUES (?, ?) ON CONFLICT(key_id) "
                       "DO UPDATE SET blocked=COALESCE(keys.blocked, excluded.blocked)", (key, reason))

    @contextmanager
    def detector(self, key: str) -> Iterator[DetectorSession]:
        with self._tx() as db:
            def load() -> DetectorRecord | None:
                row = db.execute("SELECT counters FROM detector_clients WHERE key_id=?", (key,)).fetchone()
                if row is None:
                    return None
                rows = {slot: np.frombuffer(feat, dtype="<f4")
                        for slot, feat in db.execute("SELECT slot, feat FROM detector_rows WHERE key_id=?", (key,))}
                return DetectorRecord(json.loads(row[0]), rows)

            def save(counters: dict[str, Any], rows: dict[int, np.ndarray]) -> None:
                db.execute("INSERT OR REPLACE INTO detector_clients (key_id, counters) VALUES (?, ?)",
                           (key, json.dumps(counters)))
                db.executemany("INSERT OR REPLACE INTO detector_rows (key_id, slot, feat) VALUES (?, ?, ?)",
                               [(key, slot, np.asarray(f, dtype="<f4").tobytes()) for slot, f in rows.items()])

            yield DetectorSession(load, save)

    def log(self, record: dict[str, Any]) -> None:
        self._conn().execute("INSERT INTO audit (record) VALUES (?)", (json.dumps(record, separators=(",", ":")),))

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(r) for (r,) in self._conn().execute("SELECT record FROM audit ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()


# Redis: one hash per key (used, tokens, stamp, blocked); the bucket decision runs as one Lua script.
ACQUIRE_LUA = """
local h = KEYS[1]
local n, budget, rate, burst, now, consume = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local used = tonumber(redis.call('HGET', h, 'used') or '0')
local tokens = redis.call('HGET', h, 'tokens')
local stamp = tonumber(redis.call('HGET', h, 'stamp') or '0')
if budget >= 0 and used + n > budget then return {0, used, 'budget', '0'} end
if tokens then tokens = tonumber(tokens) else tokens = burst end
if rate > 0 then
  if redis.call('HEXISTS', h, 'tokens') == 1 then tokens = math.min(burst, tokens + math.max(now - stamp, 0) * rate) end
  if n > burst then return {0, used, 'burst', '0'} end
  if tokens < n then return {0, used, 'rate', tostring((n - tokens) / rate)} end
  tokens = tokens - n
end
if consume == 1 then
  redis.call('HSET', h, 'used', used + n, 'tokens', tostring(tokens), 'stamp', tostring(now))
  return {1, used + n, '', '0'}
end
return {1, used + n, '', '0'}
"""


class RedisState(State):
    """State in Redis (``redis://host:port/db``), shared by every host that points at it."""

    def __init__(self, url: str, prefix: str = "medshield:", clock: Clock = time.time) -> None:
        try:
            import redis
        except ImportError as exc:
            raise MedShieldError("--state redis://... needs the redis client: pip install 'medshield[redis]'") from exc
        self.clock, self.prefix = clock, prefix
        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise MedShieldError(f"cannot reach the state store at {url}: {first_line(exc)}") from None
        self._acquire = self.r.register_script(ACQUIRE_LUA)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _decide(self, key: str, n: int, policy: LimitPolicy, consume: bool) -> LimitDecision:
        budget = -1 if policy.budget is None else policy.budget
        ok, used, reason, retry = self._acquire(keys=[self._k("key", key)],
                                                args=[n, budget, policy.rate or 0, policy.burst, self.clock(), int(consume)])
        used = int(used)
        remaining = None if policy.budget is None else max(policy.budget - used, 0)
        if ok:
            return LimitDecision(True, used, remaining)
        reason = reason.decode() if isinstance(reason, bytes) else reason
        retry_after = float(retry) if reason == "rate" else None
        return LimitDecision(False, used, remaining, reason, retry_after)  # type: ignore[arg-type]

    def acquire(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        return self._decide(key, n, policy, True)

    def peek(self, key: str, n: int, policy: LimitPolicy) -> LimitDecision:
        return self._decide(key, n, policy, False)

    def used(self, key: str) -> int:
        return int(self.r.hget(self._k("key", key), "used") or 0)

    def blocked(self, key: str) -> str | None:
        value = self.r.hget(self._k("key", key), "blocked")
        return value.decode() if value is not None else None

    def block(self, key: str, reason: str) -> None:
        self.r.hsetnx(self._k("key", key), "blocked", reason)

    @contextmanager
    def detector(self, key: str) -> Iterator[DetectorSession]:
        counters_key, rows_key = self._k("det", key), self._k("detrows", key)
        with self.r.lock(self._k("detlock", key), timeout=60, blocking_timeout=60):
            def load() -> DetectorRecord | None:
                raw = self.r.get(counters_key)
                if raw is None:
                    return None
                rows = {int(s): np.frombuffer(f, dtype="<f4") for s, f in self.r.hgetall(rows_key).items()}
                return DetectorRecord(json.loads(raw), rows)

            def save(counters: dict[str, Any], rows: dict[int, np.ndarray]) -> None:
                pipe = self.r.pipeline()
                pipe.set(counters_key, json.dumps(counters))
                if rows:
                    pipe.hset(rows_key, mapping={str(s): np.asarray(f, dtype="<f4").tobytes() for s, f in rows.items()})
                pipe.execute()

            yield DetectorSession(load, save)

    def log(self, record: dict[str, Any]) -> None:
        self.r.rpush(self._k("audit"), json.dumps(record, separators=(",", ":")))

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.r.lrange(self._k("audit"), 0, -1)]

    def close(self) -> None:
        self.r.close()


def open_state(spec: str | Path | None) -> State:
    """``None`` or ``"memory"``: :class:`MemoryState`; ``redis://...``: :class:`RedisState`; anything
    else (optionally ``sqlite:///path``): an SQLite file."""
    text = "memory" if spec is None else str(spec)
    if text == "memory":
        return MemoryState()
    if text.startswith(("redis://", "rediss://", "unix://")):
        return RedisState(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    elif "://" in text:
        raise MedShieldError(f"unknown --state {text!r}: give a file path (SQLite), sqlite:///PATH, redis://HOST:PORT "
                             "or memory")
    return SQLiteState(text)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

