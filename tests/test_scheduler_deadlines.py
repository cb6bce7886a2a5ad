"""reserve(max_wait=...): when a queued waiter fails, and what its QuotaWaitError says."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from pangocdp_async import Margin, QuotaScheduler, QuotaWaitError, RateLimit
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock

T = TypeVar("T")
NO_MARGIN = Margin(0.0, 0.0)
Event = tuple[str, str, float, float]  # (what, who, loop time, retry_after)


def virtual(main: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        return await main()
    return run_in_virtual_time(run())


def one_per_second() -> QuotaScheduler:
    return QuotaScheduler([RateLimit(1, 1.0)], margin=NO_MARGIN, rng=random.Random(1))


async def attempt(s: QuotaScheduler, who: str, events: list[Event],
                  max_wait: float | None = None, hold: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    try:
        r = await s.reserve(max_wait=max_wait)
    except QuotaWaitError as exc:
        # (a wrong budget or a missing estimate shows as NaN, which equals nothing)
        retry_after = exc.retry_after if exc.budget == max_wait else None
        said = math.nan if retry_after is None else retry_after
        events.append(("failed", who, loop.time(), said))
        return
    events.append(("started", who, loop.time(), 0.0))
    await asyncio.sleep(hold)
    s.complete(r)


def test_a_waiter_fails_at_its_deadline_though_one_ahead_already_left() -> None:
    """First in line (max_wait 1.2) starts at 1 s; the next (max_wait 1.5, its turn at 2 s)
    still fails at 1.5 s, saying the slot is 0.5 s away."""
    async def main() -> list[Event]:
        s = one_per_second()
        s.complete(await s.reserve())
        events: list[Event] = []
        await asyncio.gather(attempt(s, "first", events, 1.2),
                             attempt(s, "second", events, 1.5))
        return events
    (what1, who1, at1, _), (what2, who2, at2, retry2) = virtual(main)
    assert (what1, who1, what2, who2) == ("started", "first", "failed", "second")
    assert at1 == pytest.approx(1.0)
    assert at2 == pytest.approx(1.5)
    assert retry2 == pytest.approx(0.5)


def test_a_waiter_fails_at_its_deadline_while_the_one_ahead_is_in_flight() -> None:
    """As above, but the first send's answer takes 2 s: the second still fails at 1.5 s,
    reporting its budget (the slot is in flight: no known wait)."""
    async def main() -> list[Event]:
        s = one_per_second()
        s.complete(await s.reserve())
        events: list[Event] = []
        await asyncio.gather(attempt(s, "first", events, 1.2, hold=2.0),
                             attempt(s, "second", events, 1.5))
        return events
    (what1, _, at1, _), (what2, _, at2, retry2) = virtual(main)
    assert (what1, what2) == ("started", "failed")
    assert at1 == pytest.approx(1.0)
    assert at2 == pytest.approx(1.5)
    assert retry2 == 1.5


def test_a_budget_ending_as_a_slot_frees_is_refused_at_once() -> None:
    """The next slot frees at 1 s, exactly when the budget of a waiter arriving now ends: it
    is refused at once (it would only fail at 1 s: that slot is the head's, its own turn is a
    second later), with retry_after the time to that slot, and the head starts at 1 s."""
    async def main() -> list[Event]:
        s = one_per_second()
        s.complete(await s.reserve())
        events: list[Event] = []
        await asyncio.gather(attempt(s, "head", events), attempt(s, "next", events, 1.0))
        return events
    (what1, who1, at1, retry1), (what2, who2, at2, _) = virtual(main)
    assert (what1, who1, what2, who2) == ("failed", "next", "started", "head")
    assert at1 == pytest.approx(0.0)
    assert retry1 == pytest.approx(1.0)
    assert at2 == pytest.approx(1.0)


def test_with_every_slot_in_flight_the_wait_reported_is_the_budget() -> None:
    """Both slots are in flight (no known time at which one frees): max_wait=1 fails at 1 s
    and reports its budget, not an infinite wait."""
    async def main() -> list[Event]:
        s = QuotaScheduler([RateLimit(2, 1.0)], margin=NO_MARGIN)
        held = [await s.reserve(), await s.reserve()]
        events: list[Event] = []
        await attempt(s, "third", events, 1.0)
        for r in held:
            s.complete(r)
        return events
    [(what, _, at, retry)] = virtual(main)
    assert what == "failed"
    assert at == pytest.approx(1.0)
    assert retry == 1.0


async def test_a_waiter_woken_in_time_is_not_failed_by_its_deadline_later(
    clock: ManualClock,
) -> None:
    """A waiter is woken (a send that never left gave its slot back) and, before it runs,
    the clock passes its deadline and another send completes: it still gets its slot."""
    parked = asyncio.Event()

    async def park(seconds: float) -> None:  # a timer that only a test would let fire
        await parked.wait()
    s = QuotaScheduler([RateLimit(2, 1.0)], margin=NO_MARGIN, clock=clock, sleep=park)
    a = s.try_reserve()
    b = s.try_reserve()
    assert a is not None
    assert b is not None
    waiter = asyncio.ensure_future(s.reserve(max_wait=5.0))
    await asyncio.sleep(0)
    assert s.waiting == 1
    s.complete(a, counted=False)  # a slot is free: the waiter is woken, has not run yet
    clock.advance(10.0)
    s.complete(b)
    r = await waiter
    assert r.stamp == clock.now
    s.complete(r)
    await s.close()


@pytest.mark.parametrize(("max_wait", "expected"), [
    (1.0, ("failed", 0.0, 1.0)),  # the slot is exactly the budget away: no use waiting
    (1.25, ("started", 1.0, 0.0)),
])
def test_a_slot_exactly_max_wait_away_is_refused_at_once(
        max_wait: float, expected: tuple[str, float, float]) -> None:
    """Waiting the whole budget to fail at the moment the slot frees helps nobody: a slot
    known to lie at the budget's end, or beyond, is refused at once."""
    async def main() -> list[Event]:
        s = one_per_second()
        s.complete(await s.reserve())
        events: list[Event] = []
        await attempt(s, "one", events, max_wait)
        return events
    [(what, _, at, retry)] = virtual(main)
    assert what == expected[0]
    assert (at, retry) == pytest.approx(expected[1:])


def test_a_429_pause_ending_at_a_queued_waiters_deadline_fails_it_at_once() -> None:
    """A waiter with 2 s of budget queues; 0.5 s later a 429 pauses every sender until exactly
    its deadline: it fails then and there, not after waiting out its budget."""
    async def main() -> tuple[float, float, float | None]:
        loop = asyncio.get_running_loop()
        s = QuotaScheduler([RateLimit(1, 1.0)], margin=NO_MARGIN, rng=_NoJitter(),
                           retry_after_pad=1.0)
        held = s.try_reserve()
        assert held is not None
        waiter = asyncio.ensure_future(s.reserve(max_wait=2.0))
        await asyncio.sleep(0.5)
        pause_end = s.on_rate_limited(0.5)
        s.complete(held, rejected=True)
        with pytest.raises(QuotaWaitError) as info:
            await waiter
        return loop.time(), pause_end, info.value.retry_after
    failed_at, pause_end, retry_after = virtual(main)
    assert pause_end == pytest.approx(2.0)
    assert failed_at == pytest.approx(0.5)
    assert retry_after == pytest.approx(1.5)


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return 0.0

