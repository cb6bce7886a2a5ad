"""Edges of the sliding window's bookkeeping: where exact counting ends and buckets begin (a
capacity of 1,000), a send exactly one span plus the look-back old (gone from the record and from
the snapshot), when expired sends are compacted out of memory (1,024 of them, at least half the
list), a fill's last instant, the compact snapshot (sends in one millisecond merged, times
delta-encoded, the sends since a fill saved with it), and a fill the server's count of remaining
requests contradicts (dropped, and a sender it held starts at once). Times are arguments or an
injected clock, so every figure is computed by hand."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from pangocdp_async._limiter._windows import SlidingWindow
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock

NO_MARGIN = Margin(0.0, 0.0)


def sliding(capacity: int = 10, period: float = 1.0) -> SlidingWindow:
    """Without margin: span = period, one send refills every period / capacity."""
    return SlidingWindow(RateLimit(capacity, period), NO_MARGIN)


def sched(limits: Sequence[RateLimit], clock: ManualClock | None = None,
          **kwargs: Any) -> QuotaScheduler:
    if clock is not None:
        kwargs.update(clock=clock, sleep=clock.sleep, wall_clock=clock)
    return QuotaScheduler(limits, margin=NO_MARGIN, rng=random.Random(1), **kwargs)


# --- exact or bucketed ----------------------------------------------------------------------

def test_a_window_of_1000_keeps_exact_times_and_one_of_1001_counts_in_buckets() -> None:
    """Up to 1,000 requests a window, a send leaves exactly one span after it was filed; above,
    it is filed at the end of its bucket (a thousandth of the period) and leaves that much
    later."""
    exact, bucketed = sliding(capacity=1000), sliding(capacity=1001)
    for w in (exact, bucketed):
        w.record(0.0004, 1000)
    assert exact.earliest(0) == pytest.approx(1.0004, abs=1e-9)
    assert (exact.used(1.0003), exact.used(1.0005)) == (1000, 0)
    assert bucketed.earliest(1) == pytest.approx(1.001, abs=1e-9)
    assert (bucketed.used(1.0005), bucketed.used(1.0011)) == (1000, 0)


# --- forgetting what can no longer count ----------------------------------------------------

def test_a_send_one_span_and_the_lookback_old_is_forgotten() -> None:
    """(2/1 s) Sends completed at 0.0, 5.5 and 6.0: at 6.0 the first left the window exactly 5 s
    (the look-back) ago and can never count again, so it is dropped; the other two still fill
    the window until 6.5, and the snapshot holds just them."""
    clock = ManualClock(0.0)
    s = sched([RateLimit(2, 1.0)], clock)
    for at in (0.0, 5.5, 6.0):
        clock.now = at
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
    assert not s.has_capacity()
    assert s.next_free() == pytest.approx(0.5)
    assert s.window_usage()[0][1] == 2
    window = s.export_state()["windows"][0]
    assert (window["ms"], window["n"]) == ([5500, 500], [1, 1])


# --- compaction ---------------------------------------------------------------------------

def test_expired_sends_stay_in_memory_until_1024_have_piled_up() -> None:
    """Dropping expired sends from the front of the lists costs a copy, so it waits until
    1,024 have expired: a few expired ones are only skipped."""
    w = sliding()
    for k in range(10):
        w.record(float(k))
    w.expire(10.0)  # sends up to 4.0 are 6 s (span + look-back) old: 5 of 10 expired
    assert w.entries() == 10
    assert w.used(9.0) == 1
    assert w.export(0.0)["n"] == [1] * 5


def test_expired_sends_are_compacted_once_1024_make_half_the_list() -> None:
    """(1000 sends / 1019 s: span + look-back = 1024 s) One send a second for 2048 s: at 2046 s,
    1023 have expired (kept); at 2047 s, 1024, half the list: memory drops to the live part,
    and nothing live is lost or moved."""
    w = sliding(capacity=1000, period=1019.0)
    for k in range(2048):
        w.record(float(k))
    w.expire(2046.0)
    assert w.entries() == 2048
    w.expire(2047.0)
    assert w.entries() == 1024
    saved = w.export(0.0)
    assert saved["ms"][:2] == [1_024_000, 1000]
    assert saved["n"] == [1] * 1024
    assert w.used(2047.0) == 1019
    assert w.remaining(2047.0, lookback=5.0) == 1000 - 1024
    assert w.earliest(0) == pytest.approx(1048.0 + 1019.0)


def test_expired_sends_are_not_compacted_while_the_live_part_is_larger() -> None:
    """(1000 sends / 2043 s: span + look-back = 2048 s) 3072 sends, 1024 expired: a third of the
    list, so no compaction yet (it would copy twice the expired part)."""
    w = sliding(capacity=1000, period=2043.0)
    for k in range(3072):
        w.record(float(k))
    w.expire(3071.0)
    assert w.entries() == 3072
    assert len(w.export(0.0)["n"]) == 2048


# --- the end of a fill --------------------------------------------------------------------

def test_a_send_filed_at_the_fill_leaves_with_the_fill() -> None:
    """(4/1 s) Full at 1.0; a send answered at the same instant is counted on top of the
    phantoms while they last, and, like any send, has left one span later: at 2.0 the window
    is empty."""
    w = sliding(capacity=4)
    w.fill(1.0)
    w.record(1.0)
    assert w.used(1.5) == 3  # 2 phantoms left + the send
    assert w.used(2.0) == 0
    assert w.remaining(2.0) == 4


# --- the compact snapshot -----------------------------------------------------------------

def test_a_snapshot_merges_sends_within_one_millisecond_and_delta_encodes_the_rest() -> None:
    """Saved times are whole milliseconds rounded up: sends that round to the same one are one
    entry with their counts added; the rest are stored as the gap from the previous one."""
    w = sliding()
    for t, n in [(0.1001, 1), (0.1002, 2), (0.5, 1), (0.5004, 3), (0.7, 1)]:
        w.record(t, n)
    assert w.entries() == 5
    saved = w.export(1000.0)
    assert saved["ms"] == [1_000_101, 399, 1, 199]
    assert saved["n"] == [3, 1, 3, 1]
    other = sliding()
    other.restore(saved, -1000.0, 0.8)
    assert [other.used(t) for t in (0.8, 1.1005, 1.1015, 1.5005, 1.5015, 1.7005)] == [
        8, 8, 5, 4, 1, 0]  # each filed at its millisecond, rounded up


def test_a_snapshot_saves_the_sends_since_a_fill_with_it() -> None:
    """(4/1 s) Two sends at 0.5, full at 1.0, one send at 1.1: the snapshot says one send came
    after the fill, and a window that loads it paces the same (the next send at 1.5)."""
    w = sliding(capacity=4)
    w.record(0.5, 2)
    w.fill(1.0)
    w.record(1.1)
    saved = w.export(1000.0)
    assert (saved["fill_at"], saved["fill_sends"]) == (1001.0, 1)
    other = sliding(capacity=4)
    other.restore(saved, -1000.0, 1.3)
    assert other.earliest(0) == pytest.approx(1.5)
    assert w.earliest(0) == pytest.approx(1.5)


# --- a fill the server contradicts --------------------------------------------------------

def test_a_fill_is_dropped_when_the_window_allows_fewer_than_the_server_says() -> None:
    """(4/1 s) Four sends answered at 0.75 fill the window; a 429 at 1.0 models it full too. At
    1.5 a success says 1 request is left where the window allows none: the fill goes, so once
    the four sends have left (1.75) the window is empty, with no phantom left over."""
    clock = ManualClock(0.75)
    s = sched([RateLimit(4, 1.0)], clock)
    reservations = [s.try_reserve() for _ in range(4)]
    for r in reservations:
        assert r is not None
        s.complete(r)
    clock.now = 1.0
    s.on_rate_limited(None)
    clock.now = 1.5
    assert s.window_usage()[0][1] == 4
    assert s.on_remaining(1) == 0
    clock.now = 1.8
    assert s.window_usage()[0][1] == 0


def test_a_sender_held_by_a_fill_starts_as_soon_as_the_server_contradicts_it() -> None:
    """(4/1 s) A 429 at 1.0 (no pause: retry_after_pad=0) models the window full, so the next
    send waits until 1.25; at 1.1 a success says 4 requests are left: the fill goes and the
    waiting sender starts then, not at 1.25."""
    async def main() -> float:
        s = sched([RateLimit(4, 1.0)], retry_after_pad=0.0)
        await asyncio.sleep(1.0)
        rejected = await s.reserve()
        s.complete(rejected, rejected=True)
        s.on_rate_limited(None, rejected)
        waiter = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0.1)
        assert not waiter.done()
        assert s.on_remaining(4) == 0
        started = await waiter
        s.complete(started)
        return started.stamp
    assert run_in_virtual_time(main()) == pytest.approx(1.1)
