"""A quota shared by the processes of one host: a SQLite file every process opens.

Each operation is one short write transaction (``BEGIN IMMEDIATE`` in WAL mode), so operations
of all processes apply one after the other. Time is the host's clock since boot, read inside the
transaction: every process on the host reads the same clock, and a step of the wall clock (NTP,
an operator) does not move it (see :class:`HostClock`). The operations run in a worker
thread, so a locked file or a slow disk never holds up the event loop; a lock held past
``lock_timeout`` is a :class:`QuotaBackendError` (the shared scheduler waits and retries).

Tables (prefixed ``pangocdp_quota_``, so the file can hold others): ``meta`` (one row per quota:
the pause, the ramp, counters), ``window`` (one row per window: totals, a 429's fill, or a token
bucket), ``sends`` (one row per send time or bucket, trimmed as sends leave their window) and
``leases`` (sends in flight).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .._validate import check_seconds
from ._backend import (
    QuotaBackendError,
    QuotaConfig,
    QuotaConfigError,
    WindowConfig,
    new_lease_id,
)

__all__ = ["HostClock", "SQLiteQuotaBackend"]

_INF = math.inf
_NEG_INF = -math.inf
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pangocdp_quota_meta (
    ns TEXT PRIMARY KEY, config TEXT NOT NULL, epoch INTEGER NOT NULL,
    drained INTEGER NOT NULL DEFAULT 0,
    paused_until REAL, pause_started REAL, level INTEGER NOT NULL DEFAULT 0,
    ramp REAL, next_lease INTEGER NOT NULL DEFAULT 0,
    reservations INTEGER NOT NULL DEFAULT 0, rate_limited INTEGER NOT NULL DEFAULT 0,
    tightened INTEGER NOT NULL DEFAULT 0, touched REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pangocdp_quota_window (
    ns TEXT NOT NULL, win INTEGER NOT NULL,
    cum INTEGER NOT NULL DEFAULT 0, base INTEGER NOT NULL DEFAULT 0, top INTEGER,
    fill_at REAL, fill_cum INTEGER NOT NULL DEFAULT 0,
    tokens REAL, t REAL, filled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, win)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pangocdp_quota_sends (
    ns TEXT NOT NULL, win INTEGER NOT NULL, k INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (ns, win, k)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pangocdp_quota_clock (
    boot TEXT PRIMARY KEY, offset REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pangocdp_quota_leases (
    ns TEXT NOT NULL, id INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (ns, id)) WITHOUT ROWID;
"""


def _opt(value: float) -> float | None:
    """inf and -inf are kept as NULL (the meaning of each column says which)."""
    return value if math.isfinite(value) else None


class _Window:
    """One window's row, loaded for a transaction (the sends stay in the table)."""

    __slots__ = (
        "base",
        "cfg",
        "changed",
        "cum",
        "fill_at",
        "fill_cum",
        "filled",
        "index",
        "t",
        "tokens",
        "top",
    )

    def __init__(self, index: int, cfg: WindowConfig, row: tuple[Any, ...] | None) -> None:
        self.index = index
        self.cfg = cfg
        self.changed = row is None
        if row is None:
            row = (0, 0, None, None, 0, None, None, 0)
        self.cum, self.base, self.top = int(row[0]), int(row[1]), row[2]
        self.fill_at = _NEG_INF if row[3] is None else float(row[3])
        self.fill_cum = int(row[4])
        self.tokens = float(cfg.capacity) if row[5] is None else float(row[5])
        self.t = _NEG_INF if row[6] is None else float(row[6])
        self.filled = bool(row[7])

    def row(self, ns: str) -> tuple[Any, ...]:
        return (ns, self.index, self.cum, self.base, self.top, _opt(self.fill_at), self.fill_cum,
                self.tokens, _opt(self.t), int(self.filled))


class _Txn:
    """The operations, applied inside one write transaction on ``db``. Each mirrors the local
    scheduler (``_scheduler.py``) and its windows (``_windows.py``) step by step."""

    def __init__(self, db: sqlite3.Connection, ns: str, config: QuotaConfig, now: float,
                 known_epoch: int | None) -> None:
        self.db = db
        self.ns = ns
        self.cfg = config
        self.now = now
        row = db.execute(
            "SELECT config, epoch, drained, paused_until, pause_started, level, ramp, "
            "next_lease, reservations, rate_limited, tightened, touched FROM pangocdp_quota_meta "
            "WHERE ns = ?", (ns,)).fetchone()
        if row is not None and row[0] != config.signature() and self._abandoned(row[0],
                                                                                row[11]):
            # The record of settings nobody used for longer than their longest window: every
            # send it counted has left its windows. The new settings take over.
            self._forget()
            row, known_epoch = None, None
        rows = {r[0]: r[1:] for r in db.execute(
            "SELECT win, cum, base, top, fill_at, fill_cum, tokens, t, filled "
            "FROM pangocdp_quota_window WHERE ns = ?", (ns,))}
        self.windows = [_Window(i, w, rows.get(i)) for i, w in enumerate(config.windows)]
        self.sliding = config.policy == "sliding"
        lost = False
        if row is None:
            # A new quota; or one whose record vanished (the file was replaced) while this
            # process was using it: then the windows may be full for all it knows.
            self.epoch = random.getrandbits(48)
            self.drained = 0
            self.paused_until = self.pause_started = _NEG_INF
            self.level, self.ramp = 0, _INF
            self.next_lease = self.reservations = self.rate_limited = self.tightened = 0
            lost = known_epoch is not None
        else:
            if row[0] != config.signature():
                raise QuotaConfigError(
                    f"this quota is already paced with other settings ({row[0]!r}); this "
                    f"process was given {config.describe()} ({config.signature()!r}): every "
                    "process sharing a quota must use the same windows, margin and policy "
                    "(a quota left unused for its longest window takes new settings)")
            self.epoch, self.drained = int(row[1]), int(row[2])
            self.paused_until = _NEG_INF if row[3] is None else float(row[3])
            self.pause_started = _NEG_INF if row[4] is None else float(row[4])
            self.level = int(row[5])
            self.ramp = _INF if row[6] is None else float(row[6])
            self.next_lease, self.reservations = int(row[7]), int(row[8])
            self.rate_limited, self.tightened = int(row[9]), int(row[10])
            lost = known_epoch is not None and known_epoch != self.epoch and not self.drained
        if lost:
            for w in self.windows:
                self.fill(w, now)
            self.drained = 1
        self.expired = self._expire_leases()
        self.in_flight: int = db.execute(
            "SELECT COUNT(*) FROM pangocdp_quota_leases WHERE ns = ?", (ns,)).fetchone()[0]

    def _abandoned(self, signature: str, touched: float) -> bool:
        try:  # the stored settings' longest window (see QuotaConfig.signature)
            spans = [float(part.split("/")[2]) for part in signature.split(";")[3:]]
        except (IndexError, ValueError):
            return False
        longest = max([*spans, self.cfg.keep_for - self.cfg.lookback - 60.0])
        if self.db.execute("SELECT 1 FROM pangocdp_quota_leases WHERE ns = ? LIMIT 1",
                           (self.ns,)).fetchone():
            return False
        return self.now - float(touched) > longest + self.cfg.lookback + 60.0

    def _forget(self) -> None:
        for table in ("meta", "window", "sends", "leases"):
            self.db.execute(f"DELETE FROM pangocdp_quota_{table} WHERE ns = ?",  # noqa: S608
                            (self.ns,))

    def commit_rows(self) -> None:
        db = self.db
        db.execute(
            "INSERT OR REPLACE INTO pangocdp_quota_meta (ns, config, epoch, drained, "
            "paused_until, pause_started, level, ramp, next_lease, reservations, rate_limited, "
            "tightened, touched) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.ns, self.cfg.signature(), self.epoch, self.drained, _opt(self.paused_until),
             _opt(self.pause_started), self.level, _opt(self.ramp), self.next_lease,
             self.reservations, self.rate_limited, self.tightened, self.now))
        changed = [w.row(self.ns) for w in self.windows if w.changed]
        if changed:
            db.executemany(
                "INSERT OR REPLACE INTO pangocdp_quota_window (ns, win, cum, base, top, fill_at, "
                "fill_cum, tokens, t, filled) VALUES (?,?,?,?,?,?,?,?,?,?)", changed)

    # --- leases ----------------------------------------------------------------------------
    def _expire_leases(self) -> int:
        rows = self.db.execute(
            "SELECT id, expires FROM pangocdp_quota_leases WHERE ns = ? AND expires <= ? "
            "ORDER BY expires", (self.ns, self.now)).fetchall()
        for _, expires in rows:
            for w in self.windows:  # its process went quiet: counted as answered at the end
                self.record(w, float(expires))
        if rows:
            self.db.execute("DELETE FROM pangocdp_quota_leases WHERE ns = ? AND expires <= ?",
                            (self.ns, self.now))
        return len(rows)

    # --- one window ----------------------------------------------------------------------
    def _key(self, w: _Window, t: float) -> int:
        return math.ceil(t / w.cfg.resolution)

    def record(self, w: _Window, t: float, n: int = 1) -> None:
        w.changed = True
        if not self.sliding:
            w.tokens = self._tokens_at(w, t) - n
            w.t = max(t, w.t)
            return
        k = self._key(w, t)
        if w.top is not None and w.top > k and w.cum > w.base:
            k = w.top  # never file before the newest send on record (as locally: the tail)
        self.db.execute(
            "INSERT INTO pangocdp_quota_sends (ns, win, k, n) VALUES (?,?,?,?) "
            "ON CONFLICT (ns, win, k) DO UPDATE SET n = n + excluded.n",
            (self.ns, w.index, k, n))
        w.top = k
        w.cum += n

    def expire(self, w: _Window) -> None:
        if not self.sliding:
            return
        cutoff = math.floor((self.now - w.cfg.span - self.cfg.lookback) / w.cfg.resolution)
        gone = self.db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM pangocdp_quota_sends WHERE ns = ? AND win = ? "
            "AND k <= ?", (self.ns, w.index, cutoff)).fetchone()[0]
        if gone:
            self.db.execute("DELETE FROM pangocdp_quota_sends WHERE ns = ? AND win = ? AND k <= ?",
                            (self.ns, w.index, cutoff))
            w.base += int(gone)
            w.changed = True

    def earliest(self, w: _Window, in_flight: int) -> float:
        cfg = w.cfg
        if not self.sliding:
            need = 1.0 + in_flight
            if need > cfg.capacity:
                return _INF
            if w.tokens >= need:
                return w.t
            return w.t + (need - w.tokens) / cfg.rate
        room = cfg.capacity - in_flight
        if room <= 0:
            return _INF
        retained = w.cum - w.base
        due = _NEG_INF
        if retained >= room:
            kth = retained - room + 1  # the room-th most recent send, counted from the oldest
            seen = 0
            for k, n in self.db.execute(
                    "SELECT k, n FROM pangocdp_quota_sends WHERE ns = ? AND win = ? ORDER BY k",
                    (self.ns, w.index)):
                seen += n
                if seen >= kth:
                    due = k * cfg.resolution + cfg.span
                    break
        if w.fill_at > _NEG_INF:
            after_fill = w.cum - w.fill_cum + in_flight + 1
            due = max(due, min(w.fill_at + after_fill * cfg.step, w.fill_at + cfg.span))
        return due

    def _tokens_at(self, w: _Window, t: float) -> float:
        if t <= w.t:
            return w.tokens
        return min(float(w.cfg.capacity), w.tokens + (t - w.t) * w.cfg.rate)

    def _count_after(self, w: _Window, since: float) -> int:
        older = self.db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM pangocdp_quota_sends WHERE ns = ? AND win = ? "
            "AND k <= ?", (self.ns, w.index, math.floor(since / w.cfg.resolution))).fetchone()[0]
        return w.cum - w.base - int(older)

    def _count(self, w: _Window, since: float) -> int:
        real = self._count_after(w, since)
        if w.fill_at == _NEG_INF:
            return real
        if self.now >= w.fill_at + w.cfg.span:
            w.fill_at = _NEG_INF
            w.changed = True
            return real
        gone = math.floor((self.now - w.fill_at) / w.cfg.step)
        phantoms = max(0, w.cfg.capacity - max(0, gone))
        return max(real, phantoms + w.cum - w.fill_cum)

    def used(self, w: _Window) -> int:
        if not self.sliding:
            return w.cfg.capacity - math.floor(self._tokens_at(w, self.now))
        return self._count(w, self.now - w.cfg.span)

    def remaining_in(self, w: _Window, lookback: float) -> int:
        if not self.sliding:
            return math.floor(self._tokens_at(w, self.now))
        return w.cfg.capacity - self._count(
            w, self.now - w.cfg.span - min(lookback, self.cfg.lookback))

    def fill(self, w: _Window, now: float) -> None:
        w.changed = True
        if not self.sliding:
            t = max(now, w.t)
            w.tokens = min(0.0, self._tokens_at(w, t))
            w.t = t
            w.filled = True
            return
        w.fill_at = now
        w.fill_cum = w.cum

    def relax(self, w: _Window, server_remaining: int) -> bool:
        if not self.sliding:
            if not w.filled:
                return False
            w.filled = False
            w.changed = True
            if self._tokens_at(w, self.now) >= server_remaining:
                return False
            w.tokens = float(min(w.cfg.capacity, server_remaining))
            w.t = max(self.now, w.t)
            return True
        if w.fill_at == _NEG_INF:
            return False
        if w.cfg.capacity - self._count(w, self.now - w.cfg.span) >= server_remaining:
            return False
        w.fill_at = _NEG_INF
        w.changed = True
        return True

    def add_phantoms(self, w: _Window, n: int) -> None:
        if n <= 0:
            return
        if self.sliding:
            tail = (w.top * w.cfg.resolution if w.top is not None and w.cum > w.base
                    else self.now)
            self.record(w, max(self.now, tail), min(n, w.cfg.capacity))
        else:
            self.record(w, max(self.now, w.t), min(n, w.cfg.capacity))

    # --- the scheduler's operations --------------------------------------------------------
    def due(self) -> float:
        due = self.paused_until
        if self.in_flight >= self.ramp:
            return _INF
        for w in self.windows:
            e = self.earliest(w, self.in_flight)
            if e > due:
                due = e
        return due

    def reserve(self, lease_ttl: float, lease: int | None) -> tuple[int | None, float]:
        if lease is not None and self.db.execute(
                "UPDATE pangocdp_quota_leases SET expires = ? WHERE ns = ? AND id = ?",
                (self.now + lease_ttl, self.ns, lease)).rowcount:
            # An earlier try took it and its answer was lost: it lasts lease_ttl from now. (A
            # try never arrives after its retry or its release, as on Redis: the transaction
            # runs to its end in its thread before the next operation starts.)
            return lease, self.now
        due = self.due()
        if due > self.now:
            return None, due
        if lease is None:
            lease = new_lease_id()
        self.reservations += 1
        self.db.execute("INSERT INTO pangocdp_quota_leases (ns, id, expires) VALUES (?,?,?)",
                        (self.ns, lease, self.now + lease_ttl))
        self.in_flight += 1
        return lease, self.now

    def complete(self, lease: int, stamp: float, counted: bool, rejected: bool) -> None:
        if not self.db.execute("DELETE FROM pangocdp_quota_leases WHERE ns = ? AND id = ?",
                               (self.ns, lease)).rowcount:
            return  # completed already (a retry), or expired and counted at its end
        self.in_flight -= 1
        if counted and (self.cfg.count_rejected or not rejected):
            for w in self.windows:
                self.expire(w)
                self.record(w, self.now)
        if self.ramp < _INF and counted and not rejected and stamp > self.pause_started:
            self.ramp = _INF if self.ramp >= self.cfg.ramp_up_to else self.ramp * 2

    def rate_limited_(self, stamp: float | None, pause: float) -> float:
        now = self.now
        self.rate_limited += 1
        if stamp is not None and stamp <= self.pause_started:
            return self.paused_until
        continues = now - max(self.pause_started, self.paused_until) <= self.cfg.episode
        self.level = min(self.level + 1, len(self.windows)) if continues else 1
        for w in self.windows[: self.level]:
            self.fill(w, now)
        self.pause_started = now
        self.paused_until = max(self.paused_until, now + pause)
        self.ramp = 1
        return self.paused_until

    def remaining(self, remaining: int, stamp: float | None) -> int:
        if remaining < 0:
            return 0
        lookback = 0.0 if stamp is None else max(0.0, self.now - stamp)
        for w in self.windows:
            self.relax(w, remaining - self.in_flight)
        model = min((self.remaining_in(w, lookback) for w in self.windows),
                    default=remaining) - self.in_flight
        deficit = model - remaining
        if deficit <= 0:
            return 0
        self.tightened += deficit
        for w in self.windows:
            self.add_phantoms(w, deficit)
        return deficit


@functools.cache
def _boot_id() -> str | None:
    """This boot's id (read once: it does not change while the process lives)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _since_boot() -> float:
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class HostClock:
    """The clock every process on one host agrees on, in epoch seconds, that steps of the wall
    clock do not move: the time since boot (``CLOCK_BOOTTIME``: it counts a suspend too),
    anchored to the wall clock once per boot in the quota file. Where the boot cannot be told
    apart (no ``/proc/sys/kernel/random/boot_id``: not Linux), it is the wall clock, never read
    earlier than the newest time on record (a step back holds sends until it is caught up; a step
    forward ages the windows early)."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 since_boot: Callable[[], float] = _since_boot,
                 boot_id: Callable[[], str | None] = _boot_id) -> None:
        self.wall = wall
        self.since_boot = since_boot
        self.boot_id = boot_id

    def now(self, db: sqlite3.Connection) -> float:
        """Read inside a write transaction on ``db``."""
        boot = self.boot_id()
        if boot is not None:
            up = self.since_boot()
            row = db.execute("SELECT offset FROM pangocdp_quota_clock WHERE boot = ?",
                             (boot,)).fetchone()
            if row is not None:
                return up + float(row[0])
        last = db.execute("SELECT MAX(touched) FROM pangocdp_quota_meta").fetchone()[0]
        now = self.wall() if last is None else max(self.wall(), float(last))
        if boot is not None:  # a new boot: anchor it, the old boot's anchor is of no use
            db.execute("DELETE FROM pangocdp_quota_clock")
            db.execute("INSERT INTO pangocdp_quota_clock (boot, offset) VALUES (?, ?)",
                       (boot, now - up))
        return now


class SQLiteQuotaBackend:
    """One quota shared by every process on this host that opens ``path``.

    >>> scheduler = SharedQuotaScheduler(SQLiteQuotaBackend("/var/tmp/pangocdp-quota.sqlite"))
    ... # doctest: +SKIP

    ``lock_timeout``: how long one operation waits for another process's transaction before the
    backend counts as unavailable (the scheduler then waits and retries; it never sends
    unpaced). Time is read from ``host_clock`` (a :class:`HostClock`); ``clock`` (epoch
    seconds) replaces it in tests: every process must read the same clock.
    ``threaded=False`` runs each transaction on the event loop instead of a worker thread (for
    tests on virtual time; a lock then holds the loop for up to ``lock_timeout``).
    """

    name = "sqlite"

    def __init__(self, path: str | Path, *, lock_timeout: float = 2.0,
                 clock: Callable[[], float] | None = None, threaded: bool = True) -> None:
        check_seconds("lock_timeout", lock_timeout)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"SQLite quota file {str(self.path)!r} is a directory")
        if not self.path.parent.is_dir():
            raise ValueError(f"SQLite quota file {str(self.path)!r}: its directory does not "
                             "exist")
        self.host_clock = HostClock()
        self.lock_timeout = float(lock_timeout)
        self.threaded = bool(threaded)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._ns = "default"
        self._config: QuotaConfig | None = None
        self._epoch: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteQuotaBackend({str(self.path)!r})"

    def bind(self, namespace: str, config: QuotaConfig) -> None:
        if namespace != self._ns:
            self._epoch = None  # (what it knew was of another quota)
        self._ns = namespace
        self._config = config

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _run(self, op: Callable[[_Txn], _T]) -> _T:
        """Apply ``op`` in one write transaction (in the calling thread)."""
        config = self._config
        if config is None:
            raise RuntimeError("bind() the backend to a quota first")
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._connect()
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    now = self.host_clock.now(db) if self._clock is None else self._clock()
                    txn = _Txn(db, self._ns, config, now, self._epoch)
                    result = op(txn)
                    txn.commit_rows()
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise QuotaBackendError(f"SQLite quota file {str(self.path)!r}: {exc}") from exc
            except sqlite3.DatabaseError as exc:  # not a database, corrupt: no retry mends it
                raise QuotaConfigError(f"SQLite quota file {str(self.path)!r} cannot be used: "
                                       f"{exc}") from exc
            self._epoch = txn.epoch
            return result

    async def _call(self, op: Callable[[_Txn], _T]) -> _T:
        if not self.threaded:
            return self._run(op)
        return await asyncio.to_thread(self._run, op)

    async def reserve(self, lease_ttl: float, lease: int | None = None
                      ) -> tuple[float, int | None, float]:
        def op(t: _Txn) -> tuple[float, int | None, float]:
            granted, due = t.reserve(lease_ttl, lease)
            return t.now, granted, due
        return await self._call(op)

    async def complete(self, lease: int, stamp: float, counted: bool, rejected: bool) -> None:
        await self._call(lambda t: t.complete(lease, stamp, counted, rejected))

    async def rate_limited(self, stamp: float | None, pause: float) -> tuple[float, float]:
        return await self._call(lambda t: (t.now, t.rate_limited_(stamp, pause)))

    async def remaining(self, remaining: int, stamp: float | None) -> int:
        return await self._call(lambda t: t.remaining(remaining, stamp))

    async def drain(self) -> None:
        def op(t: _Txn) -> None:
            for w in t.windows:
                t.fill(w, t.now)
        await self._call(op)

    async def charge(self, counts: list[int]) -> None:
        def op(t: _Txn) -> None:
            for w, n in zip(t.windows, counts, strict=False):
                t.add_phantoms(w, n)
        await self._call(op)

    async def usage(self) -> tuple[float, list[int], int, float]:
        def op(t: _Txn) -> tuple[float, list[int], int, float]:
            return (t.now, [t.used(w) + t.in_flight for w in t.windows], t.in_flight, t.due())
        return await self._call(op)

    def _close(self) -> None:
        with self._lock:  # (after a transaction still running in its thread)
            if self._db is not None:
                self._db.close()
                self._db = None

    async def close(self) -> None:
        """Close the file (after a transaction still running). The quota stays in it; the
        backend can be used again."""
        if self.threaded:
            await asyncio.to_thread(self._close)
        else:
            self._close()
