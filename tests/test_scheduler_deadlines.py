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


def test_a_budget_ending_as_a_slot_frees_fails_before_that_slot_is_taken() -> None:
    """The head's slot frees at 1 s, when the budget of the waiter behind it ends: that one
    fails right then (its own turn is a second later), before the head starts, with
    retry_after its whole budget (the slot it saw free is the head's)."""
    async def main() -> list[Event]:
        s = one_per_second()
        s.complete(await s.reserve())
        events: list[Event] = []
        await asyncio.gather(attempt(s, "head", events), attempt(s, "next", events, 1.0))
        return events
    (what1, who1, at1, retry1), (what2, who2, at2, _) = virtual(main)
    assert (what1, who1, what2, who2) == ("failed", "next", "started", "head")
    assert at1 == pytest.approx(1.0)
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
