"""SQLiteQuotaBackend driven directly, on a manual clock: what each operation leaves in the
shared quota (the windows' counts, the next slot, the pause), how a record left by other
settings or lost with its file is handled, the counters an operator reads in the file, and the
host clock it reads by default."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import closing
from pathlib import Path

import pytest

from pangocdp_async import (
    Margin,
    QuotaBackendError,
    QuotaConfigError,
    RateLimit,
    SQLiteQuotaBackend,
)
from pangocdp_async._limiter._backend import QuotaConfig
from pangocdp_async._limiter._sqlite import HostClock

from .conftest import ManualClock

ONE = (RateLimit(5, 1.0),)  # spans 1.1001 s with the default margin: a send each 0.22002 s
TWO = (RateLimit(5, 1.0), RateLimit(12, 4.0))
EXACT = Margin(absolute=0.0, relative=0.0)  # windows exactly as long as their period


class Quota:
    """Backends ("processes") on one quota file, all reading one manual clock."""

    def __init__(self, path: Path) -> None:
        self.path = path / "quota.sqlite"
        self.clock = ManualClock(start=1000.0)
        self.backends: list[SQLiteQuotaBackend] = []

    def open(self, limits: Iterable[RateLimit] = ONE, policy: str = "sliding",
             margin: Margin | None = None, namespace: str = "q") -> SQLiteQuotaBackend:
        backend = SQLiteQuotaBackend(self.path, clock=self.clock, threaded=False)
        backend.bind(namespace, QuotaConfig.build(tuple(limits), policy, margin or Margin()))
        self.backends.append(backend)
        return backend

    def at(self, t: float) -> None:
        self.clock.now = t

    def meta(self, column: str) -> object:
        with closing(sqlite3.connect(self.path)) as db:
            return db.execute(f"SELECT {column} FROM pangocdp_quota_meta").fetchone()  # noqa: S608

    def raw(self, *statements: str) -> None:
        """Change the file as another program (or version) would."""
        with closing(sqlite3.connect(self.path)) as db:
            for statement in statements:
                db.execute(statement)
            db.commit()


@pytest.fixture
async def quota(tmp_path: Path) -> AsyncIterator[Quota]:
    q = Quota(tmp_path)
    yield q
    for backend in q.backends:
        await backend.close()


async def used(backend: SQLiteQuotaBackend) -> list[int]:
    _, counts, _, _ = await backend.usage()
    return counts


async def send(backend: SQLiteQuotaBackend, n: int = 1) -> None:
    """``n`` sends, each started and answered at the clock's now."""
    for _ in range(n):
        now, lease, _ = await backend.reserve(60.0)
        assert lease is not None
        await backend.complete(lease, now, True, False)


async def granted(backend: SQLiteQuotaBackend) -> bool:
    _, lease, _ = await backend.reserve(60.0)
    return lease is not None


# --- relaxing a fill the server contradicts ------------------------------------------------------
async def test_a_token_bucket_emptied_by_a_429_refills_to_what_the_server_reports(
        quota: Quota) -> None:
    b = quota.open(policy="token-bucket")
    await b.rate_limited(None, 0.0)  # the bucket is modeled empty
    assert await used(b) == [5]
    assert await b.remaining(3, None) == 0  # the server has 3 left: the bucket holds 3
    assert await used(b) == [2]
    assert await granted(b)


async def test_a_token_bucket_relaxes_once_per_429(quota: Quota) -> None:
    """The first report after a 429 ends the fill even when it confirms it; a later report
    that the server has more left than the model is no reason to refill the bucket."""
    b = quota.open(policy="token-bucket")
    await b.rate_limited(None, 0.0)
    assert await b.remaining(0, None) == 0
    assert await b.remaining(4, None) == 0
    assert await used(b) == [5]
    assert not await granted(b)


async def test_a_token_bucket_spent_by_sends_is_not_refilled_by_a_report(quota: Quota) -> None:
    b = quota.open(policy="token-bucket")
    await send(b, 5)
    assert await b.remaining(3, None) == 0
    assert await used(b) == [5]


async def test_a_drained_window_is_relaxed_by_a_report_and_charged_the_difference(
        quota: Quota) -> None:
    b = quota.open()
    await b.drain()
    assert await used(b) == [5]
    assert await b.remaining(3, None) == 2  # no longer full: 3 left, so 2 sends unseen
    assert await used(b) == [2]
    assert await granted(b)


async def test_a_fill_is_relaxed_when_the_real_sends_alone_exceed_the_report(
        quota: Quota) -> None:
    """Five sends at 1000.0, a fill at 1000.01: at 1001.0 the fill has decayed to one send but
    the five still count; the server's 2 left contradicts the model's 0, so the fill ends, and
    once the five leave their window (1001.1001) nothing is counted."""
    b = quota.open()
    await send(b, 5)
    quota.at(1000.01)
    await b.drain()
    quota.at(1001.0)
    assert await b.remaining(2, None) == 0
    quota.at(1001.105)
    assert await used(b) == [0]


async def test_remaining_returns_the_sends_charged(quota: Quota) -> None:
    b = quota.open()
    assert await b.remaining(-1, None) == 0  # nonsense from the server: ignored
    assert await b.remaining(5, None) == 0  # agrees with the model
    assert await b.remaining(6, None) == 0  # more than the model: nothing to charge
    assert await used(b) == [0]
    free = quota.open(limits=(), namespace="unpaced")
    assert await free.remaining(3, None) == 0


async def test_charge_counts_sends_per_window(quota: Quota) -> None:
    b = quota.open(limits=TWO)
    await b.charge([2, 3])
    assert await used(b) == [2, 3]
    await b.charge([1])  # fewer counts than windows: the others are left alone
    assert await used(b) == [3, 3]


# --- a clock that steps back ---------------------------------------------------------------------
@pytest.mark.parametrize("zero_charge", [False, True])
async def test_a_send_on_a_clock_that_stepped_back_is_filed_with_the_newest(
        quota: Quota, zero_charge: bool) -> None:
    """A send answered on a clock behind the newest on record is filed at the newest (it
    leaves the window with it, never before); charging zero sends files nothing."""
    b = quota.open()
    await send(b)  # at 1000.0
    if zero_charge:
        quota.at(1002.0)
        await b.charge([0])
    quota.at(1000.0 if zero_charge else 999.0)
    await send(b)
    newest = 1000.0
    quota.at(newest + 1.1001 - 0.05)
    assert await used(b) == [2]
    quota.at(newest + 1.1001 + 0.05)
    assert await used(b) == [0]


# --- the record's settings -----------------------------------------------------------------------
async def test_other_settings_are_refused_with_both_named(quota: Quota) -> None:
    a = quota.open()
    await send(a)
    b = quota.open(limits=(RateLimit(6, 1.0),))
    with pytest.raises(QuotaConfigError) as err:
        await b.reserve(60.0)
    message = str(err.value)
    assert "this quota is already paced with other settings ('sliding;-;5.0/64/300.0;" \
           "5/1.0/1.1001')" in message
    assert "this process was given policy sliding, windows [6/1s (+0.1s)]" in message
    assert "'sliding;-;5.0/64/300.0;6/1.0/1.1001'" in message
    assert re.search(r": every process sharing a quota must use the same windows, margin and "
                     r"policy \(a quota left unused for its longest window takes new "
                     r"settings\)$", message)


@pytest.mark.parametrize(("stored", "given", "idle", "taken_over"), [
    # The stored settings' longest window counts, even when the new ones are shorter.
    ((RateLimit(5, 10.0),), (RateLimit(5, 1.0),), 70.0, False),
    ((RateLimit(5, 10.0),), (RateLimit(5, 1.0),), 75.5, True),
    # Unused for its longest window (2 s) + the lookback (5 s) + 60 s: strictly more.
    ((RateLimit(5, 2.0),), (RateLimit(6, 2.0),), 60.0, False),
    ((RateLimit(5, 2.0),), (RateLimit(6, 2.0),), 67.0, False),
    ((RateLimit(5, 2.0),), (RateLimit(6, 2.0),), 67.5, True),
    # The new settings' longest window counts too.
    ((RateLimit(5, 2.0),), (RateLimit(5, 2.5),), 67.25, False),
    ((RateLimit(5, 2.0),), (RateLimit(5, 2.5),), 67.75, True),
])
async def test_a_record_unused_long_enough_takes_new_settings(
        quota: Quota, stored: tuple[RateLimit, ...], given: tuple[RateLimit, ...], idle: float,
        taken_over: bool) -> None:
    a = quota.open(limits=stored, margin=EXACT)
    await send(a, 5)
    quota.at(1000.0 + idle)
    b = quota.open(limits=given, margin=EXACT)
    if taken_over:
        assert await used(b) == [0]  # the old sends are forgotten with their settings
        assert await granted(b)
    else:
        with pytest.raises(QuotaConfigError, match="already paced with other settings"):
            await b.usage()


async def test_a_record_with_a_send_in_flight_keeps_its_settings(quota: Quota) -> None:
    a = quota.open()
    assert await granted(a)  # never completed
    b = quota.open(limits=(RateLimit(6, 1.0),))
    with pytest.raises(QuotaConfigError, match="already paced with other settings"):
        await b.usage()


async def test_a_record_whose_settings_cannot_be_read_is_never_taken_over(quota: Quota) -> None:
    a = quota.open()
    await a.usage()
    quota.raw("UPDATE pangocdp_quota_meta SET config = 'sliding;-;5.0/64/300.0;5/1.0'")
    quota.at(1e6)  # however long ago
    with pytest.raises(QuotaConfigError, match=r"other settings \('sliding;-;5.0/64/300.0;5/1"):
        await a.usage()


async def test_a_long_pause_of_every_process_is_not_a_lost_record(quota: Quota) -> None:
    """Two processes idle far longer than the windows: the record is kept as it is, so the
    second one does not take the first one's next operation for a lost record (which would
    model the windows full)."""
    a, b = quota.open(), quota.open()
    await send(a)
    await b.usage()
    quota.at(2000.0)
    await a.usage()
    assert await used(b) == [0]
    assert await granted(b)


# --- a lost record -------------------------------------------------------------------------------
async def test_a_record_lost_and_made_again_is_drained_once(quota: Quota) -> None:
    """B and C use the quota; its rows vanish; a new process A makes it again. B finds a record
    it does not know and models the windows full; C, later, finds the record B already
    drained and keeps B's fill (decaying) instead of filling again."""
    b, c = quota.open(), quota.open()
    await send(b)
    await c.usage()
    quota.raw("DELETE FROM pangocdp_quota_meta", "DELETE FROM pangocdp_quota_window",
              "DELETE FROM pangocdp_quota_sends")
    quota.at(1000.5)
    a = quota.open()
    assert await used(a) == [0]
    assert await used(b) == [5]
    quota.at(1001.0)
    assert await used(c) == [3]  # B's fill at 1000.5, two steps of 0.22 s gone
    assert await used(a) == [3]


# --- sends leave the file ------------------------------------------------------------------------
async def test_the_file_keeps_only_sends_within_a_window_and_the_lookback(quota: Quota) -> None:
    b = quota.open()
    for i in range(11):
        quota.at(1000.0 + i)
        await send(b)
    with closing(sqlite3.connect(quota.path)) as db:
        kept = db.execute("SELECT COUNT(*), SUM(n) FROM pangocdp_quota_sends").fetchone()
    assert kept == (7, 7)  # 1004..1010: within 1.1001 s + 5 s of 1010


# --- a fill ends one span after it began ---------------------------------------------------------
async def test_a_fill_ends_exactly_one_span_after_it_began(quota: Quota) -> None:
    b = quota.open(margin=EXACT)
    now, lease, _ = await b.reserve(60.0)
    assert lease is not None
    await b.drain()
    await b.complete(lease, now, True, False)  # filed at the fill's time
    quota.at(1000.99)
    assert await used(b) == [2]  # the fill's last step, and the send
    quota.at(1001.0)
    assert await used(b) == [0]  # both gone


# --- 429s ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("gap", "expected"), [
    (300.0, [5, 12]),  # within the episode: the second 429 fills the next window too
    (310.0, [5, 0]),  # a new episode: the shortest window only
])
async def test_a_second_429_fills_another_window_within_an_episode(
        quota: Quota, gap: float, expected: list[int]) -> None:
    b = quota.open(limits=TWO)
    await b.rate_limited(None, 1.0)  # paused until 1001.0
    assert await used(b) == [5, 0]
    quota.at(1001.0 + gap)
    await b.rate_limited(None, 1.0)
    assert await used(b) == expected


async def test_a_429_for_a_send_started_with_the_pause_does_not_extend_it(quota: Quota) -> None:
    b = quota.open()
    assert await b.rate_limited(None, 2.0) == (1000.0, 1002.0)
    quota.at(1001.0)
    assert await b.rate_limited(1000.0, 5.0) == (1001.0, 1002.0)  # started at the pause
    assert await b.rate_limited(1000.5, 5.0) == (1001.0, 1006.0)  # started after it


async def test_the_ramp_after_a_429_lifts_after_64_in_flight(quota: Quota) -> None:
    b = quota.open(limits=(RateLimit(1000, 1.0),))
    await b.rate_limited(None, 0.0)
    assert await b.remaining(1000, None) == 0  # the fill is contradicted: only the ramp holds
    quota.at(1000.5)
    for _ in range(7):  # each acceptance doubles it: 1, 2, ... 64, then no limit
        await send(b)
    in_flight = 0
    while await granted(b) and in_flight < 130:
        in_flight += 1
    assert in_flight == 130


async def test_the_counters_an_operator_reads_in_the_file(quota: Quota) -> None:
    b = quota.open()
    await send(b)
    assert await b.remaining(2, None) == 2
    assert await b.remaining(1, None) == 1
    await b.rate_limited(None, 0.0)
    await b.rate_limited(None, 0.0)
    quota.at(1010.0)
    await b.usage()
    assert quota.meta("reservations, rate_limited, tightened") == (1, 2, 3)


# --- the file ------------------------------------------------------------------------------------
def test_repr_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "quota.sqlite"
    assert repr(SQLiteQuotaBackend(path)) == f"SQLiteQuotaBackend({str(path)!r})"


async def test_a_locked_file_is_reported_after_lock_timeout(quota: Quota) -> None:
    b = SQLiteQuotaBackend(quota.path, clock=quota.clock, threaded=False, lock_timeout=0.0)
    quota.backends.append(b)
    b.bind("q", QuotaConfig.build(ONE, "sliding", Margin()))
    await b.usage()
    with closing(sqlite3.connect(quota.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(QuotaBackendError, match=r"quota\.sqlite'.*locked"):
            await b.usage()
        assert time.monotonic() - started < 2.0  # not the 5 s SQLite waits by default
        other.execute("ROLLBACK")
    assert await used(b) == [0]


# --- the host clock ------------------------------------------------------------------------------
def test_the_host_clock_counts_a_suspend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time since boot includes the time the host slept (CLOCK_BOOTTIME), where the
    monotonic clock would not."""
    boottime, monotonic = time.CLOCK_BOOTTIME, time.CLOCK_MONOTONIC
    readings = {boottime: 5000.0, monotonic: 1000.0}  # a host that slept 4000 s
    monkeypatch.setattr(time, "clock_gettime", lambda clock: readings[clock])
    assert HostClock().since_boot() == 5000.0
    monkeypatch.delattr(time, "CLOCK_BOOTTIME")  # a system without it
    assert HostClock().since_boot() == 1000.0
