"""QuotaScheduler unit behaviour, on virtual time (the loop's clock moves only when every task
waits) or on an injected clock."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest

from pangocdp_async import (
    DOCUMENTED_LIMITS,
    Margin,
    QuotaScheduler,
    QuotaWaitError,
    RateLimit,
    Reservation,
)
from pangocdp_async._limiter._windows import BUCKETS_PER_WINDOW, SlidingWindow
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock

T = TypeVar("T")
TWO = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
NO_MARGIN = Margin(0.0, 0.0)


def virtual(main: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        return await main()
    return run_in_virtual_time(run())


def sched(limits: Sequence[RateLimit] = TWO, **kwargs: Any) -> QuotaScheduler:
    kwargs.setdefault("margin", NO_MARGIN)
    kwargs.setdefault("rng", random.Random(1))
    return QuotaScheduler(limits, **kwargs)


async def starts(s: QuotaScheduler, n: int, rtt: float = 0.0) -> list[float]:
    """Reserve n sends one after another, each completing ``rtt`` after it starts; return
    their start times."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        r = await s.reserve()
        out.append(round(loop.time(), 6))
        assert r.stamp == loop.time()  # stamped at the real moment it starts
        if rtt:
            await asyncio.sleep(rtt)
        s.complete(r)
    return out


# --- pacing ---------------------------------------------------------------------------------
def test_sliding_starts_hand_computed() -> None:
    """(2/1 s, 3/10 s), answers instant: every window checked and taken in one step."""
    async def main() -> list[float]:
        return await starts(sched(), 6)
    # 0, 0: room in both; 1: the 1-s window's 2nd most recent send must be 1 s old; 10: the
    # 10-s window's 3rd most recent (at 0) must be 10 s old; 10 again: (0, 10] holds only the
    # sends at 1 and 10; 11: both windows agree.
    assert virtual(main) == [0.0, 0.0, 1.0, 10.0, 10.0, 11.0]


def test_token_bucket_starts_hand_computed() -> None:
    """Token-bucket policy: refill 2/s and 0.3/s, starting full."""
    async def main() -> list[float]:
        return await starts(sched(policy="token-bucket"), 5)
    # 0, 0: tokens (2, 3) -> (0, 1); 0.5: the 1-s bucket has refilled one token, the 10-s
    # bucket 1.15 -> 0.15; then the 10-s bucket needs 0.85 / 0.3 = 2.8333 s, then 1 / 0.3.
    assert virtual(main) == [0.0, 0.0, 0.5, 3.333333, 6.666667]


def test_margin_widens_every_window() -> None:
    """With a margin, the next start waits period + absolute + relative * period."""
    async def main() -> list[float]:
        return await starts(sched([RateLimit(1, 10.0)], margin=Margin(0.5, 0.01)), 2)
    assert virtual(main) == [0.0, pytest.approx(10.6)]


def test_a_send_counts_from_its_start_until_its_answer_plus_the_window() -> None:
    """Round trips of 0.3 s: a send occupies the 1-s window until its answer + 1 s, so the
    third start waits for the first answer (0.3) + 1 s: the margin for network delay is each
    request's own round trip."""
    async def main() -> list[float]:
        s = sched([RateLimit(2, 1.0)])
        loop = asyncio.get_running_loop()
        out: list[float] = []

        async def one() -> None:
            r = await s.reserve()
            out.append(round(loop.time(), 6))
            await asyncio.sleep(0.3)
            s.complete(r)

        await asyncio.gather(*(one() for _ in range(4)))
        return out
    assert virtual(main) == [0.0, 0.0, 1.3, 1.3]


def test_in_flight_sends_block_until_a_completion() -> None:
    """With the window's capacity in flight, the next sender waits for an answer, however long
    the answer takes (here 50 s), and the window then still holds the answered send."""
    async def main() -> list[float]:
        s = sched([RateLimit(2, 1.0)])
        loop = asyncio.get_running_loop()
        a, b = await s.reserve(), await s.reserve()
        later = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(50.0)
        assert not later.done()
        assert s.next_free() == float("inf")
        s.complete(a)
        c = await later
        s.complete(b)
        s.complete(c)
        return [round(c.stamp, 6), round(loop.time(), 6)]
    assert virtual(main) == [51.0, 51.0]  # a answered at 50: one slot frees at 51


def test_reserve_waits_in_fifo_order() -> None:
    """Concurrent reservations start in call order, each no earlier than the windows allow."""
    async def main() -> list[tuple[int, float]]:
        s = sched([RateLimit(1, 1.0)])
        loop = asyncio.get_running_loop()
        done: list[tuple[int, float]] = []

        async def one(i: int) -> None:
            async with s.slot():
                done.append((i, round(loop.time(), 6)))

        await asyncio.gather(*(one(i) for i in range(5)))
        return done
    assert virtual(main) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_one_timer_and_fifo_on_the_loop_clock() -> None:
    """200 waiters, released in order, with never more than one timer armed."""
    async def main() -> tuple[list[int], float]:
        s = sched([RateLimit(10, 1.0)])
        order: list[int] = []
        loop = asyncio.get_running_loop()
        timers: list[int] = []
        real_call_at = loop.call_at

        def counting_call_at(when: float, cb: Any, *args: Any) -> asyncio.TimerHandle:
            timers.append(1)
            return real_call_at(when, cb, *args)
        loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]

        async def one(i: int) -> None:
            async with s.slot():
                order.append(i)

        await asyncio.gather(*(one(i) for i in range(200)))
        assert len(timers) == 19  # one per second of waiting, not one per waiter
        return order, loop.time()
    order, ended = virtual(main)
    assert order == list(range(200))
    assert ended == pytest.approx(19.0)


def test_cancelled_waiter_takes_nothing_and_hands_on() -> None:
    """A waiter cancelled in the queue leaves it without taking a slot; the one behind it
    takes its place, and nobody waits for the cancelled one."""
    async def main() -> list[float]:
        s = sched([RateLimit(1, 1.0)])
        s.complete(await s.reserve())

        async def one() -> float:
            async with s.slot() as r:
                return round(r.stamp, 6)
        tasks = [asyncio.ensure_future(one()) for _ in range(3)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # the head
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert s.waiting == 0
        assert s.in_flight == 0
        assert s.reservations == 3
        return [r for r in results if isinstance(r, float)]
    assert virtual(main) == [1.0, 2.0]


def test_woken_waiter_cancelled_before_it_runs_hands_on() -> None:
    """The head is woken by the timer and cancelled in the same step, before it runs: the next
    waiter is woken in its place (no waiter is left with nobody to wake it)."""
    async def main() -> float:
        s = sched([RateLimit(1, 1.0)])
        s.complete(await s.reserve())
        head: asyncio.Future[Reservation] | None = None
        fire = s._on_timer

        def fire_then_cancel_head() -> None:
            fire()
            assert head is not None
            head.cancel()
        s._on_timer = fire_then_cancel_head  # type: ignore[method-assign]
        head = asyncio.ensure_future(s.reserve())
        second = asyncio.ensure_future(s.reserve())
        r = await asyncio.wait_for(second, 5.0)
        assert head.cancelled()
        return r.stamp
    assert virtual(main) == pytest.approx(1.0)


# --- stalls ---------------------------------------------------------------------------------
def test_a_stall_never_releases_a_burst() -> None:
    """A 2-s blocking call while 30 senders wait on a 10/1 s window: after it, sends start at
    the real time and at most 10 in any second (before: every overdue slot went at once)."""
    async def main() -> list[float]:
        s = sched([RateLimit(10, 1.0)])
        loop = asyncio.get_running_loop()
        out: list[float] = []

        async def one() -> None:
            async with s.slot():
                out.append(loop.time())
                await asyncio.sleep(0.01)

        def block() -> None:
            loop.advance(2.0)  # type: ignore[attr-defined]
        loop.call_at(1.5, block)
        await asyncio.gather(*(one() for _ in range(30)))
        return out
    out = virtual(main)
    assert len(out) == 30
    for i, t in enumerate(out):
        in_window = [u for u in out[i:] if u - t <= 1.0]
        assert len(in_window) <= 10, (t, in_window)
    assert not [t for t in out if 1.5 < t < 3.5]  # nothing started during the stall
    assert out[20] == pytest.approx(3.5)  # the overdue ones start when the loop is back


# --- 429s -----------------------------------------------------------------------------------
def test_429_pauses_everyone_then_ramps_up_from_one_probe() -> None:
    """After a 429 with header 2, nobody starts before 3 s (up to 10% jitter later), queued
    waiters included; then one probe goes alone, and each acceptance doubles how many may be
    in flight: 1, 2, 4 (answers take 0.2 s)."""
    async def main() -> tuple[float, list[float]]:
        s = sched([RateLimit(100, 1.0)])
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        async def one() -> None:
            async with s.slot():
                starts.append(loop.time())
                await asyncio.sleep(0.2)
        s.on_rate_limited(0.0)  # a first pause of about 1 s, so that the senders queue
        queued = [asyncio.ensure_future(one()) for _ in range(7)]
        await asyncio.sleep(0.5)
        until = s.on_rate_limited(2.0)  # at 0.5, while they wait
        await asyncio.gather(*queued)
        return until, [round(t - until, 6) for t in starts]
    until, starts = virtual(main)
    assert 3.0 <= until - 0.5 <= 3.3  # the pause, counted from the 429
    assert starts == [0.0, 0.2, 0.2, 0.4, 0.4, 0.4, 0.4]


@pytest.mark.slow
def test_a_429_after_hours_at_full_rate_pauses_about_a_second() -> None:
    """An hour at full rate on the documented windows, then one 429 with header 0: the next
    send is less than 3 s away (before: the drained model added C phantoms on top of the
    history and paused for hours)."""
    async def main() -> float:
        s = sched(DOCUMENTED_LIMITS, margin=Margin())
        loop = asyncio.get_running_loop()

        async def sender() -> None:
            while loop.time() < 3600:
                async with s.slot():
                    await asyncio.sleep(0.05)
        await asyncio.gather(*(sender() for _ in range(8)))
        s.on_rate_limited(0.0)
        before = loop.time()
        async with s.slot():
            pass
        return loop.time() - before
    assert virtual(main) < 3.0


def test_429s_of_one_episode_model_one_more_window_each() -> None:
    """First 429: the shortest window is modeled full; a second 429 (for a send after the
    pause) also fills the next; a 429 for a send from before the pause changes nothing."""
    async def main() -> list[list[int]]:
        s = sched([RateLimit(10, 1.0), RateLimit(100, 60.0), RateLimit(1000, 3600.0)])
        early = await s.reserve()
        s.complete(early)
        usage = []
        s.on_rate_limited(0.0)
        usage.append([u for _, u in s.window_usage()])
        s.on_rate_limited(0.0, early)  # same episode: counted only
        usage.append([u for _, u in s.window_usage()])
        late = await s.reserve()  # after the pause
        s.complete(late, rejected=True)
        s.on_rate_limited(0.0, late)
        usage.append([u for _, u in s.window_usage()])
        assert s.rate_limited == 3
        return usage
    first, same, second = virtual(main)
    assert first[0] == 10
    assert first[1:] == [1, 1]
    assert same == first
    assert second[1] > 90
    assert second[2] == 1  # the minute window is now full too


def test_a_429_long_after_the_last_pause_starts_a_new_episode() -> None:
    """A second 429 ten minutes after the first pause ended models only the shortest window
    full again; one four minutes after it escalates."""
    async def main() -> list[int]:
        limits = [RateLimit(10, 1.0), RateLimit(100, 60.0), RateLimit(1000, 3600.0)]
        fulls = []
        for gap in (600.0, 240.0):
            s = sched(limits)
            s.on_rate_limited(0.0)
            await asyncio.sleep(1.2 + gap)
            r = await s.reserve()
            s.complete(r, rejected=True)
            s.on_rate_limited(0.0, r)
            fulls.append(sum(1 for lim, used in s.window_usage() if used >= lim.max_requests))
        return fulls
    assert virtual(main) == [1, 2]


def test_unreadable_headers_pause_as_if_zero() -> None:
    """A 429 whose header is absent, NaN or negative pauses for 1 s (+10%), not forever or
    not at all."""
    async def main() -> list[float]:
        out = []
        for hint in (None, float("nan"), -5.0, float("inf")):
            s = sched(max_retry_after=10.0)
            out.append(s.on_rate_limited(hint) - asyncio.get_running_loop().time())
        return out
    pauses = virtual(main)
    assert all(1.0 <= p <= 1.1 for p in pauses[:3])
    assert 11.0 <= pauses[3] <= 11.0 * 1.1  # infinite: the cap


def test_repeated_429s_never_stack() -> None:
    """Twenty 429s in a row, each for a send after the last pause: every pause stays within
    header + 1 s + 10%, and a window modeled full twice holds no more than its capacity."""
    async def main() -> list[float]:
        s = sched([RateLimit(10, 1.0), RateLimit(100, 60.0)])
        loop = asyncio.get_running_loop()
        pauses = []
        for _ in range(20):
            r = await s.reserve()
            s.complete(r, rejected=True)
            pauses.append(s.on_rate_limited(0.0, r) - loop.time())
            assert all(used <= lim.max_requests for lim, used in s.window_usage())
        return pauses
    assert all(1.0 <= p <= 1.1 for p in virtual(main))


def test_absurd_retry_after_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A header of 1e9 pauses for max_retry_after (+1 s, +10%), and says so in the log."""
    async def main() -> float:
        s = sched(max_retry_after=60.0)
        with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
            return s.on_rate_limited(1e9) - asyncio.get_running_loop().time()
    assert 61.0 <= virtual(main) <= 61.0 * 1.1
    assert "capping the pause at max_retry_after=60 s" in caplog.text


def test_max_wait_fails_at_once_during_a_long_pause() -> None:
    """reserve(max_wait=5) during a 60-s pause raises QuotaWaitError at once (no time passes)
    with retry_after the rest of the pause; nothing is taken."""
    async def main() -> tuple[QuotaWaitError, float]:
        s = sched()
        loop = asyncio.get_running_loop()
        until = s.on_rate_limited(59.0)
        await asyncio.sleep(10.0)
        before = loop.time()
        with pytest.raises(QuotaWaitError) as info:
            await s.reserve(max_wait=5.0)
        assert loop.time() == before
        assert s.in_flight == 0
        assert s.reservations == 0
        return info.value, until - before
    err, rest = virtual(main)
    assert err.retry_after == pytest.approx(rest)
    assert err.budget == 5.0
    assert err.status == 429


def test_queued_waiter_fails_when_a_429_outlasts_its_budget() -> None:
    """A queued reserve(max_wait=10) fails as soon as a 429 announces a 100-s pause; one
    without max_wait keeps waiting and starts after the pause."""
    async def main() -> float:
        s = sched([RateLimit(1, 1.0)])
        loop = asyncio.get_running_loop()
        s.complete(await s.reserve())
        bounded = asyncio.ensure_future(s.reserve(max_wait=10.0))
        patient = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0.1)
        s.on_rate_limited(99.0)
        with pytest.raises(QuotaWaitError):
            await bounded
        assert loop.time() == pytest.approx(0.1)
        r = await patient
        return r.stamp
    assert 100.1 <= virtual(main) <= 100.1 + 10.0


def test_max_wait_holds_behind_a_long_queue() -> None:
    """A waiter behind 200 others on a 10/1 s window with max_wait=1.5 (the next start is 1 s
    away, so it is not refused at once) fails at 1.5 s, not when its turn comes 20 s later;
    the others are unaffected."""
    async def main() -> tuple[float, int]:
        s = sched([RateLimit(10, 1.0)])
        loop = asyncio.get_running_loop()

        async def one() -> None:
            async with s.slot():
                pass
        others = [asyncio.ensure_future(one()) for _ in range(200)]
        await asyncio.sleep(0)
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=1.5)
        failed_at = loop.time()
        await asyncio.gather(*others)
        return failed_at, s.reservations
    failed_at, reservations = virtual(main)
    assert failed_at == pytest.approx(1.5)
    assert reservations == 200


def test_max_wait_holds_while_sends_in_flight_fill_the_window() -> None:
    """With the window's capacity in flight (no known wait), max_wait=1 still fails at 1 s."""
    async def main() -> float:
        s = sched([RateLimit(2, 1.0)])
        loop = asyncio.get_running_loop()
        held = [await s.reserve(), await s.reserve()]
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=1.0)
        for r in held:
            s.complete(r)
        return loop.time()
    assert virtual(main) == pytest.approx(1.0)


def test_a_woken_waiter_rechecks_its_budget_after_a_429() -> None:
    """The head is woken, and before it runs a 429 announces a 60-s pause: with max_wait=5 it
    fails at once instead of sleeping through the pause."""
    async def main() -> float:
        s = sched([RateLimit(1, 1.0)])
        loop = asyncio.get_running_loop()
        s.complete(await s.reserve())
        fire = s._on_timer

        def fire_then_429() -> None:
            fire()
            s.on_rate_limited(59.0)
        s._on_timer = fire_then_429  # type: ignore[method-assign]
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=5.0)
        return loop.time()
    assert virtual(main) == pytest.approx(1.0)


def test_a_closed_loop_leaves_nothing_behind() -> None:
    """A loop closed with a waiter still queued and a send in flight: the next asyncio.run()
    uses the scheduler normally (the stranded send is counted, the waiter dropped)."""
    s = QuotaScheduler([RateLimit(2, 0.2)], margin=NO_MARGIN)
    loop = asyncio.new_event_loop()

    async def strand() -> list[asyncio.Task[Reservation]]:
        await s.reserve()  # never completed
        # the second starts, the third queues: the window is full in flight
        pending = [asyncio.create_task(s.reserve()) for _ in range(2)]
        await asyncio.sleep(0)
        return pending
    stranded = loop.run_until_complete(strand())
    assert not stranded[1].done()
    for task in stranded:  # stranded on purpose: no "Task was destroyed" noise at exit
        setattr(task, "_log_destroy_pending", False)  # noqa: B010 -- asyncio's private flag
    loop.close()

    async def again() -> int:
        async with s.slot():
            pass
        return s.in_flight + s.waiting
    assert asyncio.run(asyncio.wait_for(again(), 5.0)) == 0


def test_cancelling_during_a_pause_returns_at_once() -> None:
    """A sender waiting out an hour's pause is cancelled: it returns in the same instant."""
    async def main() -> float:
        s = sched()
        loop = asyncio.get_running_loop()
        s.on_rate_limited(3600.0)
        task = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        before = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return loop.time() - before
    assert virtual(main) == pytest.approx(0.0, abs=1e-9)


def test_rejected_and_unsent_requests_are_refunded_others_counted() -> None:
    """A 429 and a request that never left take nothing from the windows (Bucket4j takes no
    token from a rejection); a timed-out or cancelled one is counted; count_rejected=True
    counts 429s too. Completing twice does nothing."""
    async def main() -> list[int]:
        out = []
        for count_rejected in (False, True):
            s = sched([RateLimit(10, 1.0)], count_rejected=count_rejected)
            a, b, c = await s.reserve(), await s.reserve(), await s.reserve()
            s.complete(a, rejected=True)
            s.complete(b, counted=False)
            s.complete(c)
            s.complete(c)
            out.append(s.window_usage()[0][1])
        return out
    assert virtual(main) == [1, 2]


# --- X-Rate-Limit-Remaining ---------------------------------------------------------------
def test_remaining_only_tightens() -> None:
    """A lower X-Rate-Limit-Remaining than the model's charges the difference to every window;
    a higher one changes nothing."""
    async def main() -> tuple[int, int, list[int]]:
        s = sched([RateLimit(10, 1.0), RateLimit(100, 100.0)])
        for _ in range(3):
            s.complete(await s.reserve())
        none = s.on_remaining(50)
        charged = s.on_remaining(4)  # the model says 7 left in the 1-s window
        return none, charged, [u for _, u in s.window_usage()]
    assert virtual(main) == (0, 3, [6, 6])


def test_remaining_counts_our_sends_within_the_round_trip() -> None:
    """Our sends answered within the request's round trip may be in the server's count: with
    them counted, a server figure that includes them charges nothing."""
    async def main() -> int:
        s = sched([RateLimit(10, 1.0)])
        loop = asyncio.get_running_loop()
        early = [await s.reserve() for _ in range(5)]
        await asyncio.sleep(0.1)
        for r in early:
            s.complete(r)  # answered at 0.1
        await asyncio.sleep(0.95)
        r = await s.reserve()  # starts at 1.05; the server counts (0.05, 1.05]: 6 sends
        await asyncio.sleep(0.15)
        s.complete(r)  # at 1.2 the model's own 1-s window holds only this one
        assert loop.time() == pytest.approx(1.2)
        return s.on_remaining(4, r)
    assert virtual(main) == 0


def test_remaining_counts_sends_still_in_flight() -> None:
    """Sends still in flight may already be in the server's count: no charge for them."""
    async def main() -> int:
        s = sched([RateLimit(10, 1.0)])
        others = [await s.reserve() for _ in range(3)]
        r = await s.reserve()
        s.complete(r)
        assert len(others) == s.in_flight
        return s.on_remaining(6, r)  # 10 - 1 answered - 3 in flight
    assert virtual(main) == 0


def test_remaining_ignores_nonsense_and_charges_at_most_a_window() -> None:
    """A negative X-Rate-Limit-Remaining is ignored; 0 charges each window at most its
    capacity (never a day's block from one odd header)."""
    async def main() -> tuple[int, list[int], float]:
        s = sched([RateLimit(10, 1.0), RateLimit(100, 60.0)])
        r = await s.reserve()
        s.complete(r)
        ignored = s.on_remaining(-10**9, r)
        s.on_remaining(0, r)
        return ignored, [u for _, u in s.window_usage()], s.next_free()
    ignored, usage, wait = virtual(main)
    assert ignored == 0
    assert usage == [10, 10]  # 1 sent + 9 unseen: the 1-s window empty, as the server said
    assert wait == pytest.approx(1.0)


def test_a_success_undoes_what_stray_429s_made_up() -> None:
    """Five stray 429s model all five documented windows full (4.6/s for a day); the next
    success saying 300,000 requests are left drops those fills, and pacing is back."""
    async def main() -> tuple[float, float]:
        s = sched(DOCUMENTED_LIMITS, margin=Margin())
        for _ in range(5):
            r = await s.reserve()
            s.complete(r, rejected=True)
            s.on_rate_limited(0.0, r)
        r = await s.reserve()
        s.complete(r)
        daily_before = s.window_usage()[-1][1]
        s.on_remaining(300_000, r)
        return daily_before, s.window_usage()[-1][1]
    before, after = virtual(main)
    assert before >= 399_000  # modeled full
    assert after <= 10  # back to what was really sent


# --- memory and introspection ---------------------------------------------------------------
@pytest.mark.slow
def test_memory_stays_bounded_without_any_header() -> None:
    """An hour at full rate, no X-Rate-Limit-Remaining: the windows hold a bounded number of
    entries (before: every send ever made, 50,000 for a 10/1 s window)."""
    async def main() -> list[int]:
        s = sched([RateLimit(10, 1.0), *DOCUMENTED_LIMITS[1:]])
        loop = asyncio.get_running_loop()
        sizes = []

        async def sender() -> None:
            while loop.time() < 3600:
                async with s.slot():
                    await asyncio.sleep(0.01)
                if s.reservations % 5_000 == 0:
                    sizes.append(s.memory_entries())
        await asyncio.gather(*(sender() for _ in range(4)))
        return sizes
    sizes = virtual(main)
    assert len(sizes) >= 8
    bound = 2 * (1_024 + 10) + 2 * (1_024 + 1_000) + 3 * 2 * (1_024 + BUCKETS_PER_WINDOW)
    assert max(sizes) <= bound


@pytest.mark.slow
def test_bucketed_window_memory_is_bounded() -> None:
    """400,000 sends in the daily window keep at most one entry per bucket, not one each."""
    window = SlidingWindow(RateLimit(400_000, 86_400.0), Margin())
    t = 0.0
    for _ in range(400_000):
        window.expire(t)
        window.record(t)
        t += 0.2
    assert window.entries() <= 2 * (BUCKETS_PER_WINDOW + 1_024)
    assert window.used(t) == 400_000
    assert 86_400.0 <= window.earliest() <= 86_400.0 + 86.4 + 8.64 + 0.1 + 1e-6


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


@pytest.mark.parametrize("capacity", [10, 5_000])
def test_fill_models_exactly_full_refilling_at_its_own_pace(capacity: int) -> None:
    """A filled empty window allows its k-th send k * span / C after the fill, exact and
    bucketed alike; filling again changes nothing."""
    w = SlidingWindow(RateLimit(capacity, 10.0), NO_MARGIN)
    w.fill(100.0)
    w.fill(100.0)
    assert w.used(100.0) == capacity
    step = 10.0 / capacity
    assert w.earliest() == pytest.approx(100.0 + step, abs=w.bucket + 1e-9)
    assert w.used(100.0 + 5 * step + w.bucket + 1e-9) <= capacity - 5


def test_repr_shows_live_state(clock: ManualClock) -> None:
    """repr names the policy, each window's use, the next free start, in-flight and waiters."""
    s = QuotaScheduler([RateLimit(2, 1.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    a = s.try_reserve()
    b = s.try_reserve()
    assert a is not None
    assert b is not None
    s.complete(a)
    text = repr(s)
    assert "policy='sliding'" in text
    assert "2/1s: 2 used" in text
    assert "next_free=+1.000s" in text
    assert "in_flight=1" in text
    assert "waiters=0" in text
    assert s.try_reserve() is None


async def test_injected_clock_and_sleep_drive_the_timer(clock: ManualClock) -> None:
    """With an injected clock and sleep (no loop timer), waiters start at their slots."""
    s = QuotaScheduler([RateLimit(1, 1.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    start = clock.now
    stamps = []
    for _ in range(3):
        async with s.slot() as r:
            stamps.append(r.stamp - start)
    assert stamps == [0.0, 1.0, 2.0]


def test_a_scheduler_moves_to_a_new_event_loop() -> None:
    """One scheduler used by two asyncio.run() calls works on the second loop too."""
    s = QuotaScheduler([RateLimit(1, 0.05)], margin=NO_MARGIN)

    async def twice() -> None:
        for _ in range(2):
            async with s.slot():
                pass
    asyncio.run(twice())
    asyncio.run(asyncio.wait_for(twice(), 5.0))
    assert s.reservations == 4


class _OnlyLoad:
    def load(self) -> None:
        return None


class _OnlySave:
    def save(self, state: object) -> None:
        pass


def _tick() -> float:
    return 0.0


async def _nap(seconds: float) -> None:
    pass


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"policy": "leaky"}, ValueError,
     "policy must be 'sliding' or 'token-bucket', got 'leaky'"),
    ({"policy": "SLIDING"}, ValueError,
     "policy must be 'sliding' or 'token-bucket', got 'SLIDING'"),
    ({"save_every": 0}, ValueError, "save_every must be >= 1, got 0"),
    ({"save_every": "5"}, TypeError, "save_every must be an int, got '5'"),
    ({"clock": 5, "sleep": _nap}, TypeError, "clock must be callable, got 5"),
    ({"clock": _tick, "sleep": 5}, TypeError, "sleep must be callable, got 5"),
    ({"clock": _tick}, ValueError, "inject clock and sleep together (or neither)"),
    ({"sleep": _nap}, ValueError, "inject clock and sleep together (or neither)"),
    ({"wall_clock": 5}, TypeError, "wall_clock must be callable, got 5"),
    ({"store": object()}, TypeError, "store must have load() and save(), got object"),
    ({"store": _OnlyLoad()}, TypeError, "store must have load() and save(), got _OnlyLoad"),
    ({"store": _OnlySave()}, TypeError, "store must have load() and save(), got _OnlySave"),
    ({"max_retry_after": 0}, ValueError,
     "max_retry_after must be a finite number of seconds > 0, got 0"),
    ({"max_retry_after": "60"}, TypeError,
     "max_retry_after must be a number of seconds, got '60'"),
    ({"clock_step_allowance": float("nan")}, ValueError,
     "clock_step_allowance must be a finite number of seconds >= 0, got nan"),
    ({"clock_step_allowance": None}, TypeError,
     "clock_step_allowance must be a number of seconds, got None"),
    ({"retry_after_pad": -1.0}, ValueError,
     "retry_after_pad must be a finite number of seconds >= 0, got -1.0"),
    ({"retry_after_pad": None}, TypeError, "retry_after_pad must be a number of seconds, got None"),
    ({"count_rejected": 1}, TypeError, "count_rejected must be True or False, got 1"),
    ({"rng": 7}, TypeError, "rng must be a random.Random, got int"),
    ({"margin": 0.25}, TypeError, "margin must be a Margin, got float"),
])
def test_bad_arguments_are_refused_by_name(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Unknown policy, half-injected time, wrong types and out-of-range numbers are refused
    with an error naming the argument and showing the bad value."""
    with pytest.raises(error) as caught:
        QuotaScheduler(**kwargs)
    assert str(caught.value) == message


def test_the_arguments_at_their_bounds_and_defaults_are_kept() -> None:
    """What a scheduler was given is what it shows; a fresh one has counted nothing."""
    margin = Margin(0.5, 0.0)
    rng = random.Random(1)
    s = QuotaScheduler([RateLimit(3, 10.0), RateLimit(2, 1.0)], policy="token-bucket",
                       margin=margin, save_every=1, max_retry_after=7, retry_after_pad=0,
                       clock_step_allowance=0, rng=rng, clock=_tick, sleep=_nap)
    assert s.limits == (RateLimit(2, 1.0), RateLimit(3, 10.0))
    assert s.policy == "token-bucket"
    assert s.margin is margin
    assert (s.max_retry_after, s.retry_after_pad, s.clock_step_allowance) == (7.0, 0.0, 0.0)
    assert s.count_rejected is False
    assert s.backend_name == "local"
    assert (s.reservations, s.rate_limited, s.tightened, s.backend_errors) == (0, 0, 0, 0)
    assert s.backend_down_since is None
    assert (s.in_flight, s.waiting) == (0, 0)
    default = QuotaScheduler()
    assert default.policy == "sliding"
    assert default.margin == Margin()
    assert (default.max_retry_after, default.retry_after_pad) == (3600.0, 1.0)
    assert default.clock_step_allowance == 2.0
    assert default.count_rejected is False


class _Extreme(random.Random):
    """Draws the low or the high end of every uniform range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(("high", "hint", "pause"), [
    (False, 2.0, 3.0), (True, 2.0, 3.3), (True, 0.5, 1.65), (False, 0.5, 1.5),
    (True, None, 1.1), (True, -3.0, 1.1), (True, float("nan"), 1.1),
])
def test_a_429_pauses_for_the_hint_plus_the_pad_stretched_by_up_to_10_percent(
    clock: ManualClock, high: bool, hint: float | None, pause: float
) -> None:
    """The pause is (retry-after + 1 s) times 1 to 1.1, drawn from the given rng; a missing
    or unreadable retry-after counts as 0."""
    s = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, rng=_Extreme(high))
    assert s.on_rate_limited(hint) - clock.now == pytest.approx(pause)
    assert s.next_free() == pytest.approx(pause)


@pytest.mark.parametrize(("gap", "full"), [(300.0, [2, 3]), (300.5, [2, 0])])
def test_429s_up_to_five_minutes_after_a_pause_are_one_episode(
    clock: ManualClock, gap: float, full: list[int]
) -> None:
    """A 429 five minutes after the last pause ended still escalates (both windows modeled
    full); one later starts a new episode (the shortest window only)."""
    s = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, margin=NO_MARGIN,
                       rng=_Extreme(False))
    until = s.on_rate_limited(0.0)  # a pause of exactly 1 s
    clock.advance(until - clock.now + gap)
    s.on_rate_limited(0.0)
    assert [used for _, used in s.window_usage()] == full


def test_a_429_for_a_send_started_as_the_pause_began_is_only_counted(
    clock: ManualClock,
) -> None:
    s = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, rng=_Extreme(False))
    r = s.try_reserve()
    assert r is not None
    until = s.on_rate_limited(0.0)
    s.complete(r, rejected=True)
    assert s.on_rate_limited(30.0, r) == until
    assert s.rate_limited == 2


def test_reservations_are_numbered_from_one(clock: ManualClock) -> None:
    s = QuotaScheduler([RateLimit(5, 1.0)], clock=clock, sleep=clock.sleep)
    taken = [s.try_reserve() for _ in range(3)]
    assert [r.seq for r in taken if r is not None] == [1, 2, 3]
    assert s.reservations == 3
    assert s.in_flight == 3


async def test_closing_an_unused_scheduler_is_harmless() -> None:
    s = QuotaScheduler()
    await s.close()
    assert s.waiting == 0


def test_the_ramp_after_a_429_stops_limiting_at_64() -> None:
    """After a 429 the limit on sends in flight doubles with each acceptance (1, 2, 4, ...,
    64, then none): with answers taking 1 s, 200 senders start 1, then 2, then 8 (the two
    answers doubled it twice), then all the rest."""
    async def main() -> list[int]:
        s = sched([RateLimit(1_000, 1.0)])
        s.on_rate_limited(0.0)
        loop = asyncio.get_running_loop()
        rounds: dict[float, int] = {}

        async def one() -> None:
            async with s.slot():
                at = round(loop.time(), 3)
                rounds[at] = rounds.get(at, 0) + 1
                await asyncio.sleep(1.0)
        await asyncio.gather(*(one() for _ in range(200)))
        return [rounds[t] for t in sorted(rounds)]
    assert virtual(main) == [1, 2, 8, 189]


def test_capacity_and_next_free_at_the_edge_of_a_window(clock: ManualClock) -> None:
    """A fresh scheduler has capacity now; a spent window has none until exactly one span
    after its send, when it has again."""
    s = QuotaScheduler([RateLimit(1, 1.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    assert s.has_capacity() is True
    assert s.next_free() == 0.0
    r = s.try_reserve()
    assert r is not None
    s.complete(r)
    assert s.has_capacity() is False
    assert s.next_free() == 1.0
    clock.advance(1.0)
    assert s.has_capacity() is True
    assert s.next_free() == 0.0


async def test_injected_sleep_waits_only_as_long_as_the_window_needs(
    clock: ManualClock,
) -> None:
    """The injected sleep is asked for the exact time to the next slot, however short."""
    s = QuotaScheduler([RateLimit(1, 0.25)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    start = clock.now
    stamps = []
    for _ in range(3):
        async with s.slot() as r:
            stamps.append(r.stamp - start)
    assert stamps == [0.0, 0.25, 0.5]
    assert clock.slept == 0.5


def test_repr_without_a_loop_shows_the_configuration() -> None:
    assert repr(QuotaScheduler(TWO, policy="token-bucket")) == (
        "QuotaScheduler(policy='token-bucket', windows=[2/1s, 3/10s])")


def test_repr_shows_every_window_and_the_pause_left(clock: ManualClock) -> None:
    s = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, margin=NO_MARGIN,
                       rng=random.Random(1))
    assert "windows=[2/1s: 0 used, 3/10s: 0 used]" in repr(s)
    assert "paused=0.000s" in repr(s)
    until = s.on_rate_limited(3.0)
    clock.advance(1.0)
    assert f"paused={until - clock.now:.3f}s" in repr(s)
    assert "rate_limited=1)" in repr(s)


def test_memory_entries_counts_each_window_s_records(clock: ManualClock) -> None:
    """Three sends answered at three moments: three entries in each of the two windows."""
    s = QuotaScheduler(TWO, clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    assert s.memory_entries() == 0
    for _ in range(3):
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
        clock.advance(1.0)
    assert s.memory_entries() == 6
