"""Quota scheduler benchmark: rejections, utilization and reservation cost, on virtual time.

    python -m benchmarks.limiter [--hours 26] [--senders 64]

Every row runs 64 concurrent senders against a Bucket4j model of the server with the five
documented windows, on an event loop whose clock only moves when every task waits (so hours take
seconds and the run is repeatable). Baselines, measured in the same run: one aiolimiter
``AsyncLimiter`` per window, nested; pyrate-limiter's ``Limiter`` with the five rates.

Two utilizations, both of requests accepted: "of greedy" divides by the most a greedy Bucket4j
server accepts in the same time (min over windows of C + t * C / T: the bucket starts full and
refills continuously); "of phase-safe" divides by the most a client can send while keeping at
most C requests in every window of T, which is all that is safe when the server may refill by
interval at a phase nobody knows. cost = CPU microseconds per reservation that finds room (the
limiter's own work), in a tight loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter
from pyrate_limiter import AbstractClock, Duration, InMemoryBucket, Limiter, Rate

from pangocdp_async import DOCUMENTED_LIMITS, Margin, QuotaScheduler
from pangocdp_async.testing import Bucket4jBucket, run_in_virtual_time
from pangocdp_async.testing._bucket4j import ConsumeResult, Refill
from pangocdp_async.testing._simulation import (
    greedy_server_ceiling,
    simulate_senders,
    sliding_ceiling,
)

Acquire = Callable[[], Awaitable[Any]]


class _LoopClock(AbstractClock):
    """pyrate-limiter reads time from its own clock; point it at the (virtual) event loop."""

    def now(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000)


def ours(policy: str) -> Callable[[], tuple[Acquire, Callable[[ConsumeResult], Any]]]:
    def make() -> tuple[Acquire, Callable[[ConsumeResult], Any]]:
        s = QuotaScheduler(DOCUMENTED_LIMITS, policy=policy)  # type: ignore[arg-type]
        return s.reserve, lambda v: s.on_rate_limited(float(v.retry_after_header))
    return make


def aiolimiter_nested() -> tuple[Acquire, Callable[[ConsumeResult], Any]]:
    limiters = [AsyncLimiter(lim.max_requests, lim.period) for lim in DOCUMENTED_LIMITS]

    async def acquire() -> None:
        for limiter in reversed(limiters):  # outermost (daily) first, as users nest them
            await limiter.acquire()
    return acquire, lambda v: None


def pyrate() -> tuple[Acquire, Callable[[ConsumeResult], Any]]:
    rates = [Rate(lim.max_requests, Duration.SECOND * int(lim.period)) for lim in DOCUMENTED_LIMITS]
    bucket = InMemoryBucket(rates)
    bucket._clock = _LoopClock()  # its only clock hook
    limiter = Limiter(bucket)

    async def acquire() -> None:
        await limiter.try_acquire_async("pangocdp")
    return acquire, lambda v: None


CANDIDATES: dict[str, Callable[[], tuple[Acquire, Callable[[ConsumeResult], Any]]]] = {
    "pangocdp sliding": ours("sliding"),
    "pangocdp token-bucket": ours("token-bucket"),
    "aiolimiter x5 nested": aiolimiter_nested,
    "pyrate-limiter 5 rates": pyrate,
}


def run_row(make: Callable[[], tuple[Acquire, Callable[[ConsumeResult], Any]]], refill: Refill,
            hours: float, senders: int) -> tuple[int, int]:
    async def main() -> tuple[int, int]:
        acquire, on_rejected = make()
        server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=1234.5)
        result = await simulate_senders(acquire, server, senders=senders,
                                        duration_s=hours * 3600, on_rejected=on_rejected)
        return result.accepted, result.rejected
    return run_in_virtual_time(main())


def reservation_cost_us(make: Callable[[], tuple[Acquire, Callable[[ConsumeResult], Any]]],
                        n: int = 20_000) -> float:
    """CPU time per acquisition that finds room, on a clock that jumps 1 s between calls."""
    async def main() -> float:
        acquire, _ = make()
        loop = asyncio.get_running_loop()
        assert hasattr(loop, "advance")
        spent = 0.0
        for _ in range(n):
            loop.advance(1.0)
            t0 = time.process_time()
            await acquire()
            spent += time.process_time() - t0
        return spent / n * 1e6
    return run_in_virtual_time(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=26.0)
    parser.add_argument("--senders", type=int, default=64)
    args = parser.parse_args()
    # A 429 is logged as a warning; here the table counts them.
    logging.getLogger("pangocdp_async").setLevel(logging.ERROR)
    horizon = args.hours * 3600
    greedy = greedy_server_ceiling(DOCUMENTED_LIMITS, horizon)
    safe = sliding_ceiling(DOCUMENTED_LIMITS, Margin(0.0, 0.0), horizon)
    print(f"{args.senders} senders, {args.hours:g} simulated hours, the documented windows. "
          f"A greedy server accepts at most {greedy:,} requests; the phase-safe most is "
          f"{safe:,}.\n")
    columns = ["limiter", "server refill", "429s", "accepted", "of greedy", "of phase-safe",
               "cost µs"]
    widths = [24, 13, 7, 9, 9, 13, 7]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, make in CANDIDATES.items():
        cost = reservation_cost_us(make)
        refills: tuple[Refill, ...] = ("greedy", "interval")
        for refill in refills:
            accepted, rejected = run_row(make, refill, args.hours, args.senders)
            cells = [name, refill, f"{rejected:,}", f"{accepted:,}", f"{accepted / greedy:.2%}",
                     f"{accepted / safe:.2%}", f"{cost:.1f}"]
            print("| " + " | ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |", flush=True)


if __name__ == "__main__":
    main()
