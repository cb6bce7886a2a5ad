"""QuotaScheduler and SharedQuotaScheduler at their edges.

- max_wait=0 takes a slot that is free now, also one that frees exactly now;
- the one timer always follows what is due next: a shorter max_wait queued behind a longer
  one, a completion that moves the slot earlier (a replaced timer never sleeps), a further 429
  whose fresh fill frees the window sooner, a remaining count that relaxes a fill;
- waiters with one deadline fail in the order they queued; one failed by a 429 is told the
  pause's length;
- the ramp after a 429 is lifted after 64; a remaining count the model agrees with is silent;
- waiters that time out behind a waiting head leave nothing in memory; closing a scheduler
  that never loaded its store leaves the saved state alone;
- SharedQuotaScheduler.close() fails every queued waiter at once, and a close from another
  loop does not take an idle loop's local share away.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pangocdp_async import (
    Margin,
    QuotaScheduler,
    QuotaWaitError,
    RateLimit,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
)
from pangocdp_async._limiter import _scheduler
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock
from tests.test_quota_front import _Hooked

T = TypeVar("T")
NO_MARGIN = Margin(0.0, 0.0)


def virtual(main: Callable[[], Awaitable[T]], start: float = 0.0) -> T:
    async def run() -> T:
        return await main()
    return run_in_virtual_time(run(), start=start)


def one_per_second(**kwargs: Any) -> QuotaScheduler:
    return QuotaScheduler([RateLimit(1, 1.0)], margin=NO_MARGIN, rng=random.Random(1), **kwargs)


# --- max_wait=0: a slot only if it is free now -----------------------------------------------
def test_max_wait_zero_takes_a_free_slot() -> None:
    """reserve(max_wait=0) means "only if free now": with room in every window it gets the
    slot (it does not queue and time out at once)."""
    async def main() -> int:
        s = one_per_second()
        r = await s.reserve(max_wait=0.0)
        s.complete(r)
        return s.reservations
    assert virtual(main) == 1


async def test_max_wait_zero_takes_a_slot_that_frees_exactly_now(clock: ManualClock) -> None:
    """The window frees exactly at this moment: the slot is free now, so max_wait=0 gets it."""
    s = QuotaScheduler([RateLimit(1, 1.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    r = s.try_reserve()
    assert r is not None
    s.complete(r)
    clock.advance(1.0)
    assert s.next_free() == 0.0
    r = await s.reserve(max_wait=0.0)
    assert r.stamp == clock.now
    s.complete(r)
    with pytest.raises(QuotaWaitError):
        await s.reserve(max_wait=0.0)  # (and the next one is a second away)


# --- the one timer follows whatever is due next ---------------------------------------------
def test_a_shorter_max_wait_arriving_behind_a_longer_one_fails_in_its_time() -> None:
    """The slot is in flight (no known wait). A waiter with max_wait=2 arms the timer for its
    deadline; one arriving behind it with max_wait=0.5 still fails at 0.5 s, not at 2 s."""
    async def main() -> list[tuple[str, float, float | None]]:
        s = one_per_second()
        held = await s.reserve()
        loop = asyncio.get_running_loop()
        failed: list[tuple[str, float, float | None]] = []

        async def wait(who: str, max_wait: float) -> None:
            with pytest.raises(QuotaWaitError) as info:
                await s.reserve(max_wait=max_wait)
            failed.append((who, loop.time(), info.value.retry_after))
        await asyncio.gather(wait("long", 2.0), wait("short", 0.5))
        s.complete(held)
        return failed
    (who1, at1, retry1), (who2, at2, retry2) = virtual(main)
    assert (who1, retry1, who2, retry2) == ("short", 0.5, "long", 2.0)
    assert at1 == pytest.approx(0.5)
    assert at2 == pytest.approx(2.0)


async def test_a_timer_replaced_before_it_ran_never_fires(clock: ManualClock) -> None:
    """With an injected sleep, the timer armed for a waiter's max_wait (5 s) is replaced when
    a completion makes the slot due in 1 s: the waiter starts at 1 s, and the clock was only
    asked to sleep that long (the replaced timer never sleeps)."""
    s = QuotaScheduler([RateLimit(1, 1.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    start = clock.now
    held = s.try_reserve()
    assert held is not None
    waiter = asyncio.ensure_future(s.reserve(max_wait=5.0))
    await asyncio.sleep(0)  # queued, its timer armed for its deadline
    s.complete(held)  # due in 1 s: the timer is moved earlier
    r = await waiter
    s.complete(r)
    assert r.stamp - start == 1.0
    assert clock.slept == 1.0


def test_a_further_429_that_refills_the_window_sooner_wakes_the_queue_sooner() -> None:
    """Sends completed after a 429's fill keep the queue's head waiting until 5 s. A second
    429 of the episode models the window full anew, from now: the head then starts when that
    429's pause ends (about 2 s), not at the 5 s the first fill had set."""
    async def main() -> tuple[float, float]:
        s = QuotaScheduler([RateLimit(10, 10.0)], margin=NO_MARGIN, rng=random.Random(3))
        loop = asyncio.get_running_loop()
        sent = [await s.reserve() for _ in range(5)]
        s.on_rate_limited(0.0, sent[0])
        s.complete(sent[0], rejected=True)
        for r in sent[1:]:
            s.complete(r)
        assert s.next_free() == 5.0  # the fill's pace: 4 sends on record since it, 1 per s
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        end = s.on_rate_limited(0.0)
        assert 1.0 < end - loop.time() < 1.2
        r = await head
        s.complete(r)
        return r.stamp, end
    started, end = virtual(main)
    assert started == pytest.approx(end)


def test_a_remaining_count_that_relaxes_a_fill_wakes_the_queue_at_once() -> None:
    """After a 429, sends completed since its fill hold the head until 5 s. At 2 s (the pause
    is over) the server says 9 requests are left: the fill was too pessimistic, is dropped,
    and the head starts right then."""
    async def main() -> float:
        s = QuotaScheduler([RateLimit(10, 10.0)], margin=NO_MARGIN, rng=random.Random(3))
        sent = [await s.reserve() for _ in range(5)]
        s.on_rate_limited(0.0, sent[0])
        s.complete(sent[0], rejected=True)
        for r in sent[1:]:
            s.complete(r)
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(2.0)
        assert s.on_remaining(9) == 0
        r = await head
        s.complete(r)
        return r.stamp
    assert virtual(main) == pytest.approx(2.0)


# --- what waiters are told ------------------------------------------------------------------
def test_waiters_with_the_same_deadline_fail_in_the_order_they_queued() -> None:
    """Four waiters queued at once with max_wait=0.5 behind a send in flight: at 0.5 s they
    fail first in, first out."""
    async def main() -> list[str]:
        s = one_per_second()
        held = await s.reserve()
        failed: list[str] = []

        async def wait(who: str) -> None:
            with pytest.raises(QuotaWaitError):
                await s.reserve(max_wait=0.5)
            failed.append(who)
        await asyncio.gather(*(wait(who) for who in "abcd"))
        s.complete(held)
        return failed
    assert virtual(main) == list("abcd")


def test_a_429_fails_a_queued_waiter_with_the_length_of_the_pause() -> None:
    """At 1000.5 s a 429 pauses past a queued waiter's max_wait: it fails at once, told to
    retry after the pause (about 6 s), not after a time on the loop's clock."""
    async def main() -> tuple[float | None, float, float]:
        s = one_per_second()
        loop = asyncio.get_running_loop()
        held = await s.reserve()
        waiter = asyncio.ensure_future(s.reserve(max_wait=1.0))
        await asyncio.sleep(0.5)
        end = s.on_rate_limited(5.0)
        with pytest.raises(QuotaWaitError) as info:
            await waiter
        s.complete(held, rejected=True)
        return info.value.retry_after, end - loop.time(), info.value.budget
    retry_after, pause, budget = virtual(main, start=1000.0)
    assert retry_after is not None
    assert retry_after == pytest.approx(pause)
    assert 6.0 <= pause <= 6.6
    assert budget == 1.0


# --- the ramp after a 429, the remaining count ----------------------------------------------
def test_after_64_accepted_in_a_row_the_ramp_no_longer_limits(clock: ManualClock) -> None:
    """After a 429 the sends allowed in flight go 1, 2, 4, ..., 64 with each acceptance: the
    seventh acceptance lifts the limit, so 200 sends may then be in flight at once."""
    s = QuotaScheduler([RateLimit(10_000, 1.0)], clock=clock, sleep=clock.sleep,
                       margin=NO_MARGIN, rng=random.Random(1))
    s.on_rate_limited(0.0)
    clock.advance(5.0)  # the pause and the fill are over
    for _ in range(7):
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
    held = [s.try_reserve() for _ in range(200)]
    assert None not in held
    assert s.in_flight == 200


def test_a_remaining_count_the_model_agrees_with_charges_nothing_silently(
    clock: ManualClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """One send on record in a 10/10 s window and the server says 9 are left: exactly what
    the model expects, so nothing is charged and nothing is logged."""
    s = QuotaScheduler([RateLimit(10, 10.0)], clock=clock, sleep=clock.sleep, margin=NO_MARGIN)
    r = s.try_reserve()
    assert r is not None
    s.complete(r)
    with caplog.at_level(logging.DEBUG, logger="pangocdp_async"):
        assert s.on_remaining(9, r) == 0
    assert caplog.records == []
    assert s.tightened == 0


# --- memory and the saved state -------------------------------------------------------------
def test_waiters_cancelled_behind_a_waiting_head_leave_nothing_behind() -> None:
    """The head waits for a send in flight; 150 senders queue behind it without a max_wait and
    give up (cancelled by their own timeout). The scheduler keeps nothing of them: only the
    head's entry is left alive."""
    def live_waiters() -> int:
        gc.collect()
        return sum(isinstance(o, _scheduler._Waiter) for o in gc.get_objects())

    async def main() -> tuple[int, int]:
        s = one_per_second()
        held = await s.reserve()
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0)
        before = live_waiters()

        async def give_up() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.reserve(), 0.1)
        await asyncio.gather(*(give_up() for _ in range(150)))
        after = live_waiters()
        assert s.waiting == 1
        s.complete(held)
        s.complete(await head)
        return before, after
    assert virtual(main) == (1, 1)


class _Store:
    """A quota store holding one saved state in memory."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.state = state
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.saves += 1
        self.state = state


async def test_closing_a_scheduler_that_never_loaded_leaves_the_saved_state_alone(
    clock: ManualClock,
) -> None:
    """A scheduler made and closed without a send never read its store: it must not replace
    what another process saved there with its own empty record."""
    source = QuotaScheduler([RateLimit(10, 10.0)], clock=clock, sleep=clock.sleep,
                            wall_clock=clock)
    for _ in range(3):
        r = source.try_reserve()
        assert r is not None
        source.complete(r)
    saved = source.export_state()
    store = _Store(saved)
    unused = QuotaScheduler([RateLimit(10, 10.0)], clock=clock, sleep=clock.sleep,
                            wall_clock=clock, store=store)
    await unused.close()
    assert store.saves == 0
    assert store.state is saved


# --- SharedQuotaScheduler.close() -------------------------------------------------------------
def _now() -> float:
    return asyncio.get_running_loop().time()


def test_shared_close_fails_every_queued_waiter_at_once(tmp_path: Path) -> None:
    """Six senders wait behind a head that waits for the window: one step after close(),
    every one of them has failed (none waits for the one ahead of it to leave first)."""
    async def main() -> list[bool]:
        s = SharedQuotaScheduler(
            SQLiteQuotaBackend(tmp_path / "quota.sqlite", clock=_now, threaded=False),
            [RateLimit(1, 10.0)], margin=NO_MARGIN, namespace="ns")
        s.complete(await s.reserve())
        waiters = [asyncio.ensure_future(s.reserve()) for _ in range(7)]
        await asyncio.sleep(1.0)
        await s.close()
        await asyncio.sleep(0)
        ended = [w.done() for w in waiters[1:]]
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        return ended
    assert run_in_virtual_time(main(), start=1_000.0) == [True] * 6


def test_shared_a_close_from_another_loop_keeps_an_idle_loop_s_local_share(
        tmp_path: Path) -> None:
    """This loop sent its local share's 2 sends during an outage, the backend came back, and
    another thread's loop closed the scheduler while this one was idle: when the backend goes
    down again, the share is still spent (the next send waits for its window, about 11 s)."""
    async def main() -> float:
        hooked = _Hooked(SQLiteQuotaBackend(tmp_path / "quota.sqlite", clock=_now,
                                            threaded=False))
        s = SharedQuotaScheduler(hooked, [RateLimit(2, 10.0)], namespace="ns",
                                 on_backend_down="local-share", local_share=1)
        hooked.down = True
        for _ in range(2):
            s.complete(await asyncio.wait_for(s.reserve(), 10.0))
        hooked.down = False
        await s.flush()
        await s.flush()  # (the share's sends are charged once it is back)
        thread = threading.Thread(target=lambda: asyncio.run(s.close()))
        thread.start()
        thread.join()
        hooked.down = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        waited = loop.time() - start
        hooked.down = False
        await s.close()
        return waited
    assert 10.0 < run_in_virtual_time(main(), start=1_000.0) < 11.1
