"""QuotaScheduler unit behaviour, on an injected clock or on virtual time."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest

from pangocdp_async import DOCUMENTED_LIMITS, Margin, QuotaScheduler, RateLimit, SQLiteQuotaStore
from pangocdp_async._limiter._windows import BUCKETS_PER_WINDOW, SlidingWindow
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock

TWO = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
NO_MARGIN = Margin(0.0, 0.0)


def _sched(clock: ManualClock, limits: list[RateLimit] = TWO, **kwargs: object) -> QuotaScheduler:
    return QuotaScheduler(limits, clock=clock, sleep=clock.sleep, margin=NO_MARGIN,
                          **kwargs)  # type: ignore[arg-type]


def test_sliding_slots_hand_computed(clock: ManualClock) -> None:
    """Claims across (2/1 s, 3/10 s): every window checked and taken in one step."""
    s = _sched(clock)
    slots = [s.claim().slot - clock.now for _ in range(6)]
    # 0, 0: both windows have room; 1: the 1-s window's 2nd most recent send must be 1 s old;
    # 10: the 10-s window's 3rd most recent (at 0) must be 10 s old; 10 again: (0, 10] holds
    # only the sends at 1 and 10; 11: both windows agree.
    assert slots == [0.0, 0.0, 1.0, 10.0, 10.0, 11.0]


def test_token_bucket_slots_hand_computed(clock: ManualClock) -> None:
    """Token-bucket policy: refill 2/s and 0.3/s, starting full."""
    s = _sched(clock, policy="token-bucket")
    slots = [round(s.claim().slot - clock.now, 6) for _ in range(5)]
    # 0, 0: tokens (2, 3) -> (0, 1); 0.5: the 1-s bucket has refilled one token, the 10-s
    # bucket 1.15 -> 0.15; then the 10-s bucket needs 0.85 / 0.3 = 2.8333 s, then 1 / 0.3.
    assert slots == [0.0, 0.0, 0.5, 3.333333, 6.666667]


def test_margin_widens_every_window(clock: ManualClock) -> None:
    """With a margin, the next slot waits period + absolute + relative * period."""
    s = QuotaScheduler([RateLimit(1, 10.0)], clock=clock, sleep=clock.sleep,
                       margin=Margin(0.5, 0.01))
    s.claim()
    assert s.claim().slot - clock.now == pytest.approx(10.6)


async def test_reserve_waits_in_fifo_order(clock: ManualClock) -> None:
    """Concurrent reservations complete in call order, each at its slot on the clock."""
    s = _sched(clock, [RateLimit(1, 1.0)])
    start = clock.now
    done: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        reservation = await s.reserve()
        assert clock.now >= reservation.slot  # never released early
        done.append((i, reservation.slot - start))

    await asyncio.gather(*(one(i) for i in range(5)))
    assert done == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_one_timer_and_fifo_on_the_loop_clock() -> None:
    """On the loop's clock: 200 waiters, released in order, by at most one armed timer."""
    async def main() -> list[int]:
        s = QuotaScheduler([RateLimit(10, 1.0)], margin=NO_MARGIN)
        order: list[int] = []
        armed: list[int] = []

        async def one(i: int) -> None:
            await s.reserve()
            order.append(i)
            armed.append(int(s._handle is not None))

        await asyncio.gather(*(one(i) for i in range(200)))
        assert asyncio.get_running_loop().time() == pytest.approx(19.0)
        return order

    assert run_in_virtual_time(main()) == list(range(200))


async def test_cancelled_waiter_leaves_scheduler_consistent(clock: ManualClock) -> None:
    """A waiter cancelled in the queue is skipped; its slot stays counted (never refunded)."""
    s = _sched(clock, [RateLimit(1, 1.0)])
    start = clock.now
    await s.reserve()
    tasks = [asyncio.ensure_future(s.reserve()) for _ in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r.slot - start for r in results if not isinstance(r, BaseException)] == [1.0, 3.0]
    assert s.claim().slot - start == 4.0  # the cancelled slot at 2.0 still counted
    assert not s._waiters


def test_bucketed_window_memory_is_bounded() -> None:
    """400,000 sends in the daily window keep at most one entry per bucket, not one each."""
    window = SlidingWindow(RateLimit(400_000, 86_400.0), Margin())
    t = 0.0
    for _ in range(400_000):
        window.record(t)
        t += 0.2
    window.expire(t)
    assert len(window._times) - window._head <= BUCKETS_PER_WINDOW + 2
    assert window.used(t) == 400_000
    # the window is full: the next send waits for the oldest bucket to leave it
    assert 86_400.0 <= window.earliest() <= 86_400.0 + 86.4 + 8.64 + 0.25 + 1e-6


def test_bucketed_window_errs_late_never_early() -> None:
    """Bucketing files a send under its bucket's end: the window frees up at most one bucket
    later than exact counting would, never earlier."""
    rng = random.Random(3)
    times = sorted(rng.random() * 100 for _ in range(6_000))
    w = SlidingWindow(RateLimit(5_000, 10.0), NO_MARGIN)
    assert w.bucket == 10.0 / BUCKETS_PER_WINDOW
    for x in times:
        w.record(x)
    exact = times[-5_000] + 10.0  # the 5000th most recent send must be 10 s old
    assert exact <= w.earliest() <= exact + w.bucket + 1e-9


async def test_429_pauses_everyone_and_drains(clock: ManualClock) -> None:
    """After a 429, no slot is handed out before header + 1 s, queued waiters included, and the
    windows are treated as drained: the next sends come at the window's long-run pace."""
    s = _sched(clock, [RateLimit(10, 1.0), RateLimit(100, 100.0)], rng=random.Random(1))
    start = clock.now
    for _ in range(5):
        s.claim()
    queued = [asyncio.ensure_future(s.reserve()) for _ in range(3)]
    await asyncio.sleep(0)  # these three go at once: 10/s has room for them
    late = [asyncio.ensure_future(s.reserve()) for _ in range(5)]
    until = s.on_rate_limited(2.0)
    # Drained 100/100 s window: 100 phantom sends 1 s apart up to now, plus our 8 real ones:
    # the 100th most recent is 92 phantoms back, at -91 s, so the model waits 9 s, more than
    # the header's 2 + 1 s; jitter adds up to 10%.
    assert 9.0 <= until - start <= 9.9
    results = await asyncio.gather(*queued, *late)
    slots = [r.slot - start for r in results]
    assert slots[:3] == [0.0, 0.0, 0.0]  # sent before the 429
    assert min(slots[3:]) >= until - start  # nobody after it sends during the pause
    assert slots == sorted(slots)
    # after the pause, the drained window's long-run pace: one per second
    assert [round(b - a, 6) for a, b in itertools.pairwise(slots[4:])] == [1.0, 1.0, 1.0]
    assert s.rate_limited == 1


def test_429s_of_one_episode_pause_once(clock: ManualClock) -> None:
    """429s for requests sent before the pause began are counted, not paused again."""
    s = _sched(clock, rng=random.Random(1))
    early = s.claim()
    first = s.on_rate_limited(0.0)
    second = s.on_rate_limited(0.0, early)
    assert first == second
    assert s.rate_limited == 2


def test_remaining_only_tightens(clock: ManualClock) -> None:
    """X-Rate-Limit-Remaining below the model's count charges the difference to every window;
    a higher number changes nothing."""
    s = _sched(clock, [RateLimit(10, 1.0), RateLimit(100, 100.0)])
    for _ in range(3):
        s.claim()
    assert s.on_remaining(50) == 0  # the server has more left than we think: ignore
    assert s.window_usage()[0][1] == 3
    assert s.on_remaining(4) == 3  # model says 7 left in the 1-s window; server says 4
    assert [used for _, used in s.window_usage()] == [6, 6]
    assert s.tightened == 3


def test_repr_shows_live_state(clock: ManualClock) -> None:
    """repr names the policy, each window's use, the next free slot and the waiters."""
    s = _sched(clock, [RateLimit(2, 1.0)])
    s.claim()
    s.claim()
    text = repr(s)
    assert "policy='sliding'" in text
    assert "2/1s: 2 used" in text
    assert "next_free=+1.000s" in text
    assert "waiters=0" in text


def test_state_round_trip_across_clocks(clock: ManualClock) -> None:
    """Exported state (epoch seconds) loads into a scheduler whose clock has another origin."""
    wall = ManualClock(1_700_000_000.0)
    a = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, wall_clock=wall, margin=NO_MARGIN)
    for _ in range(3):
        a.claim()
    state = a.export_state()
    other = ManualClock(5.0)
    b = QuotaScheduler(TWO, clock=other, sleep=other.sleep, wall_clock=wall, margin=NO_MARGIN)
    b.import_state({**state, "unsaved_limit": 0})
    # a's sends at wall 1_700_000_000 + (0, 0, 1): b must wait until its 10-s window frees up
    assert b.claim().slot - other.now == pytest.approx(10.0)


def test_restore_charges_unsaved_reservations(clock: ManualClock) -> None:
    """State saved before a crash is loaded with up to save_every unsaved sends charged."""
    wall = ManualClock(1_700_000_000.0)
    a = QuotaScheduler([RateLimit(100, 60.0)], clock=clock, sleep=clock.sleep, wall_clock=wall,
                       save_every=10)
    state = a.export_state()
    b = QuotaScheduler([RateLimit(100, 60.0)], clock=clock, sleep=clock.sleep, wall_clock=wall)
    b.import_state(state)
    assert b.window_usage()[0][1] == 10


def test_policies_load_each_others_state(clock: ManualClock) -> None:
    """A token-bucket scheduler can load a sliding one's state and vice versa."""
    wall = ManualClock(1_700_000_000.0)
    sliding = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, wall_clock=wall)
    for _ in range(2):
        sliding.claim()
    tb = QuotaScheduler(TWO, policy="token-bucket", clock=clock, sleep=clock.sleep,
                        wall_clock=wall)
    tb.import_state({**sliding.export_state(), "unsaved_limit": 0})
    assert not tb.has_capacity()  # the 1-s window's two tokens are spent
    back = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, wall_clock=wall)
    back.import_state({**tb.export_state(), "unsaved_limit": 0})
    assert [used for _, used in back.window_usage()] == [2, 2]


async def test_sqlite_store_saves_and_restores(tmp_path: Path, clock: ManualClock) -> None:
    """With a SQLite store, state is saved every save_every claims and on close, and a new
    scheduler loads it on first use."""
    path = tmp_path / "quota.sqlite3"
    wall = ManualClock(1_700_000_000.0)
    store = SQLiteQuotaStore(path, key="acct-1")
    a = QuotaScheduler(DOCUMENTED_LIMITS, clock=clock, sleep=clock.sleep, wall_clock=wall,
                       store=store, save_every=5)
    for _ in range(7):
        a.claim()
    saved = SQLiteQuotaStore(path, key="acct-1").load()
    assert saved is not None
    assert sum(n for _, n in saved["windows"][0]["sends"]) == 5  # saved at the 5th claim
    await a.close()
    b = QuotaScheduler(DOCUMENTED_LIMITS, clock=clock, sleep=clock.sleep, wall_clock=wall,
                       store=SQLiteQuotaStore(path, key="acct-1"))
    b.claim()
    assert [used for _, used in b.window_usage()] == [8] * 5  # 7 restored, clean: none charged
    assert SQLiteQuotaStore(path, key="other").load() is None


def test_bad_arguments() -> None:
    """Unknown policy, half-injected time and bad save_every are refused."""
    with pytest.raises(ValueError, match="policy"):
        QuotaScheduler(policy="leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="together"):
        QuotaScheduler(clock=lambda: 0.0)
    with pytest.raises(ValueError, match="save_every"):
        QuotaScheduler(save_every=0)
