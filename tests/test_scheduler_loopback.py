"""The scheduler in front of FakePangoCDP over loopback, in real time, with scaled-down
windows."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from pangocdp_async import Margin, PangoCDPClient, QuotaScheduler, RateLimit, RateLimitedError
from pangocdp_async.testing import FakePangoCDP

# Real time over loopback: seconds each.
pytestmark = pytest.mark.slow

SCALED = [RateLimit(20, 0.4), RateLimit(100, 2.0)]


async def _send_all(client: PangoCDPClient, batches: list[list[dict[str, int]]],
                    senders: int) -> int:
    """Senders take batches from a shared queue; a 429 puts the batch back (counted)."""
    queue: asyncio.Queue[list[dict[str, int]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    rejected = 0

    async def sender() -> None:
        nonlocal rejected
        while not queue.empty():
            batch = queue.get_nowait()
            try:
                await client.ingest("order", batch, source="POS")
            except RateLimitedError:
                rejected += 1
                queue.put_nowait(batch)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return rejected


async def test_zero_429s_and_every_entry_once_over_loopback() -> None:
    """210 requests of 50 entries from 16 senders, paced by 20/0.4 s and 100/2 s: the fake
    (a greedy Bucket4j bucket) never answers 429 and receives each entry exactly once."""
    counter = itertools.count()
    batches = [[{"id": next(counter)} for _ in range(50)] for _ in range(210)]
    async with FakePangoCDP(rate_limits=SCALED, refill="greedy") as fake:
        limiter = QuotaScheduler(SCALED, margin=Margin(0.05, 0.0))
        async with PangoCDPClient(**fake.client_kwargs(), limiter=limiter) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            rejected = await _send_all(client, batches, senders=16)
            elapsed = loop.time() - started
    assert rejected == 0
    assert fake.rate_limited == 0
    ids = [entry["id"] for entry in fake.accepted]
    assert sorted(ids) == list(range(210 * 50))
    # 100 in the first 2 s, 100 more once those are 2 s old, the last 10 after 4 s: the windows
    # are used fully (each send is held for its round trip plus 2 s plus the 0.05 s margin;
    # the upper bound leaves room for a loaded CI machine)
    assert 4.0 <= elapsed < 6.0


async def test_injected_429_pauses_every_sender() -> None:
    """A 429 from the fake stops all eight senders for at least header + 1 s: no request
    reserved after the 429 arrives reaches the fake during the pause."""
    counter = itertools.count()
    batches = [[{"id": next(counter)}] for _ in range(40)]
    async with FakePangoCDP(rate_limits=None, script=["ok"] * 10 + ["429:0"]) as fake:
        limiter = QuotaScheduler([RateLimit(50, 1.0)], margin=Margin(0.0, 0.0))
        async with PangoCDPClient(**fake.client_kwargs(), limiter=limiter) as client:
            rejected = await _send_all(client, batches, senders=8)
    assert rejected == 1
    assert limiter.rate_limited == 1
    t429 = next(r.at for r in fake.requests if r.status == 429)
    later = [r.at - t429 for r in fake.requests if r.at > t429]
    in_flight = [dt for dt in later if dt < 0.2]  # reserved before the 429 came back
    assert len(in_flight) <= 7
    resumed = [dt for dt in later if dt >= 0.2]
    assert resumed, "the senders never resumed"
    assert min(resumed) >= 1.0  # header "0" + 1 s
    assert sorted(e["id"] for e in fake.accepted) == list(range(40))


async def test_a_blocking_call_in_the_application_causes_no_429() -> None:
    """A 1.5-s time.sleep() blocks the event loop (client and fake alike) while 8 senders wait
    on a 10/1 s window: afterwards the overdue senders start at the real time, and the fake
    answers no 429 (before: every overdue slot went at once)."""
    limits = [RateLimit(10, 1.0)]
    batches = [[{"id": i}] for i in range(25)]
    async with FakePangoCDP(rate_limits=limits, refill="greedy") as fake:
        limiter = QuotaScheduler(limits)
        async with PangoCDPClient(**fake.client_kwargs(), limiter=limiter) as client:
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, time.sleep, 1.5)  # the application blocks the loop
            rejected = await _send_all(client, batches, senders=8)
    assert rejected == 0
    assert fake.rate_limited == 0
    assert sorted(e["id"] for e in fake.accepted) == list(range(25))
    arrivals = sorted(r.at for r in fake.requests)
    assert all(b - a > 1.0 for a, b in zip(arrivals, arrivals[10:], strict=False))
