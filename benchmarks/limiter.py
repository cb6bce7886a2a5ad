"""Quota scheduler benchmark: rejections, utilization and cost, on virtual time.

    python -m benchmarks.limiter [--hours 26] [--senders 64] [--quick]

Every row runs concurrent senders against a Bucket4j model of the server with the five
documented windows, on an event loop whose clock only moves when every task waits (so hours take
seconds and the run is repeatable). Baselines, measured in the same run: one aiolimiter
``AsyncLimiter`` per window, nested; pyrate-limiter's ``Limiter`` with the five rates.

Table 1, plain conditions (each leg of a request 20-80 ms). Two utilizations, both of requests
accepted: "of greedy" divides by the most a greedy Bucket4j server accepts in the same time;
"of phase-safe" by the most a client can send while keeping at most C requests in every window
of T, which is all that is safe when the server may refill by interval at an unknown phase.
cost = CPU microseconds per acquisition that finds room, in a tight loop.

Table 2, production conditions, interval refill: event-loop stalls of 0.3-2 s every ~10 s
(2 h), lognormal legs (median 30 ms, sigma 1) and Pareto legs (20 ms x Pareto(1.5)), and
another client's burst at minute 23. "over at send" is how far the busiest window of each
period goes over its capacity, counted where requests are handed to the transport.

Table 3, the scheduler's own cost over 2 hours at full rate with no X-Rate-Limit-Remaining
header and a SQLite store attached: CPU per reservation (the scheduler's synchronous steps:
the readiness check, the take, the completion) in the first and the last 10 minutes, the
longest single step in wall time (how long it held the event loop), the saved state's size and
the entries held in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiolimiter import AsyncLimiter
from pyrate_limiter import AbstractClock, Duration, InMemoryBucket, Limiter, Rate

from pangocdp_async import DOCUMENTED_LIMITS, Margin, QuotaScheduler, SQLiteQuotaStore
from pangocdp_async.testing import (
    Bucket4jBucket,
    Refill,
    greedy_server_ceiling,
    lognormal_latency,
    pareto_latency,
    random_stalls,
    run_in_virtual_time,
    scheduler_hooks,
    simulate_senders,
    sliding_ceiling,
    window_excess,
)

HOUR = 3600.0
Hooks = dict[str, Any]


class _LoopClock(AbstractClock):
    """pyrate-limiter reads time from its own clock; point it at the (virtual) event loop."""

    def now(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000)


def ours(policy: str) -> Callable[[], Hooks]:
    def make() -> Hooks:
        return dict(scheduler_hooks(QuotaScheduler(policy=policy)))  # type: ignore[arg-type]
    return make


def aiolimiter_nested() -> Hooks:
    limiters = [AsyncLimiter(lim.max_requests, lim.period) for lim in DOCUMENTED_LIMITS]

    async def acquire() -> None:
        for limiter in reversed(limiters):  # outermost (daily) first, as users nest them
            await limiter.acquire()
    return {"acquire": acquire}


def pyrate() -> Hooks:
    rates = [Rate(lim.max_requests, Duration.SECOND * int(lim.period)) for lim in DOCUMENTED_LIMITS]
    bucket = InMemoryBucket(rates)
    bucket._clock = _LoopClock()  # its only clock hook
    limiter = Limiter(bucket)

    async def acquire() -> None:
        await limiter.try_acquire_async("pangocdp")
    return {"acquire": acquire}


CANDIDATES: dict[str, Callable[[], Hooks]] = {
    "pangocdp sliding": ours("sliding"),
    "pangocdp token-bucket": ours("token-bucket"),
    "aiolimiter x5 nested": aiolimiter_nested,
    "pyrate-limiter 5 rates": pyrate,
}


def simulate(make: Callable[[], Hooks], refill: Refill, hours: float, senders: int,
             **conditions: Any) -> tuple[int, int, int, int]:
    """(accepted, rejected, sent, worst excess over any window at the point of sending)."""
    async def main() -> tuple[int, int, int, int]:
        server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=1234.5)
        result = await simulate_senders(server=server, senders=senders, duration_s=hours * HOUR,
                                        keep_sends=True, **make(), **conditions)
        excess = max(window_excess(result.sends, DOCUMENTED_LIMITS).values())
        return result.accepted, result.rejected, result.sent, excess
    return run_in_virtual_time(main())


def reservation_cost_us(make: Callable[[], Hooks], n: int = 20_000) -> float:
    """CPU time per acquisition that finds room, on a clock that jumps 1 s between calls."""
    async def main() -> float:
        hooks = make()
        acquire = hooks["acquire"]
        release = hooks.get("release")
        loop = asyncio.get_running_loop()
        assert hasattr(loop, "advance")
        spent = 0.0
        for _ in range(n):
            loop.advance(1.0)
            t0 = time.process_time()
            token = await acquire()
            if release is not None:
                release(token, None)
            spent += time.process_time() - t0
        return spent / n * 1e6
    return run_in_virtual_time(main())


def row(cells: list[str], widths: list[int], left: int = 2) -> str:
    cells = [c.ljust(w) if i < left else c.rjust(w)
             for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
    return "| " + " | ".join(cells) + " |"


def header(columns: list[str], widths: list[int]) -> None:
    print(row(columns, widths, left=len(columns)))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def table_plain(hours: float, senders: int) -> None:
    horizon = hours * HOUR
    greedy = greedy_server_ceiling(DOCUMENTED_LIMITS, horizon)
    safe = sliding_ceiling(DOCUMENTED_LIMITS, Margin(0.0, 0.0), horizon)
    print(f"Table 1: {senders} senders, {hours:g} simulated hours, legs 20-80 ms. A greedy server "
          f"accepts at most {greedy:,} requests; the phase-safe most is {safe:,}.\n")
    widths = [24, 13, 7, 9, 9, 13, 7]
    header(["limiter", "server refill", "429s", "accepted", "of greedy", "of phase-safe",
            "cost µs"], widths)
    for name, make in CANDIDATES.items():
        cost = reservation_cost_us(make)
        for refill in ("greedy", "interval"):
            accepted, rejected, _, _ = simulate(make, refill, hours, senders)
            print(row([name, refill, f"{rejected:,}", f"{accepted:,}", f"{accepted / greedy:.2%}",
                       f"{accepted / safe:.2%}", f"{cost:.1f}"], widths), flush=True)
    print()


def table_conditions(hours: float, senders: int, stall_hours: float) -> None:
    conditions: list[tuple[str, float, dict[str, Any]]] = [
        ("stalls 0.3-2 s / ~10 s", stall_hours,
         {"stalls": random_stalls(stall_hours * HOUR, seed=2)}),
        ("lognormal legs", hours, {"latency_s": lognormal_latency(0.03, 1.0)}),
        ("Pareto(1.5) legs", hours, {"latency_s": pareto_latency(1.5, 0.02)}),
        ("foreign burst, minute 23", hours, {"foreign": [(23 * 60.0, 50)]}),
    ]
    print(f"Table 2: production conditions, interval refill, {senders} senders.\n")
    widths = [24, 24, 6, 7, 9, 13, 12]
    header(["limiter", "condition", "hours", "429s", "accepted", "of phase-safe",
            "over at send"], widths)
    for label, h, extra in conditions:
        safe = sliding_ceiling(DOCUMENTED_LIMITS, Margin(0.0, 0.0), h * HOUR)
        for name in ("pangocdp sliding", "aiolimiter x5 nested", "pyrate-limiter 5 rates"):
            accepted, rejected, _, excess = simulate(CANDIDATES[name], "interval", h, senders,
                                                     **extra)
            print(row([name, label, f"{h:g}", f"{rejected:,}", f"{accepted:,}",
                       f"{accepted / safe:.2%}", f"{excess:,}"], widths), flush=True)
    print()


def table_cost(hours: float) -> None:
    """The scheduler's synchronous work per reservation over a long run without headers."""
    # (virtual time, CPU seconds, wall seconds, step) per synchronous step
    steps: list[tuple[float, float, float, str]] = []

    async def main(path: Path) -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        scheduler = QuotaScheduler(store=SQLiteQuotaStore(path), wall_clock=loop.time)

        def timed(step: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                w0, c0 = time.perf_counter(), time.process_time()
                try:
                    return step(*args, **kwargs)
                finally:
                    steps.append((loop.time(), time.process_time() - c0,
                                  time.perf_counter() - w0, step.__name__))
            return run
        scheduler._take = timed(scheduler._take)  # type: ignore[method-assign]
        scheduler._due = timed(scheduler._due)  # type: ignore[method-assign]
        scheduler.complete = timed(scheduler.complete)  # type: ignore[method-assign]
        server = Bucket4jBucket(DOCUMENTED_LIMITS, "greedy")
        result = await simulate_senders(server=server, senders=8, duration_s=hours * HOUR,
                                        **scheduler_hooks(scheduler, remaining_header=False))
        await scheduler.close()
        size = len(orjson.dumps(scheduler.export_state()))
        return result.sent, size, scheduler.memory_entries()

    with tempfile.TemporaryDirectory() as tmp:
        sent, size, entries = run_in_virtual_time(main(Path(tmp) / "quota.sqlite3"))

    def per_reservation_us(lo: float, hi: float) -> float:
        inside = [(cpu, name) for t, cpu, _, name in steps if lo <= t < hi]
        taken = sum(1 for _, name in inside if name == "_take")
        return sum(cpu for cpu, _ in inside) / max(1, taken) * 1e6

    # The first and the last 10 minutes in which requests were sent (under the hourly window
    # a full-rate run sends in bursts and idles at the end of each hour).
    sending = [t for t, _, _, name in steps if name == "_take"]
    first = per_reservation_us(sending[0], sending[0] + 600)
    last = per_reservation_us(sending[-1] - 600, sending[-1] + 1e-9)
    longest = max(steps, key=lambda step: step[2])
    median = statistics.median(cpu for _, cpu, _, _ in steps)
    print(f"Table 3: {hours:g} h at full rate, 8 senders, no X-Rate-Limit-Remaining, SQLite store "
          f"saving every 50 sends; {sent:,} reservations.\n")
    widths = [44, 14]
    header(["measure", "value"], widths)
    for label, value in [
        ("CPU µs per reservation, first 10 min", f"{first:.1f}"),
        ("CPU µs per reservation, last 10 min", f"{last:.1f}"),
        ("last / first", f"{last / first:.2f}x"),
        ("median synchronous step, CPU µs", f"{median * 1e6:.1f}"),
        (f"longest synchronous step ({longest[3]}), wall ms", f"{longest[2] * 1e3:.2f}"),
        ("saved state, KiB", f"{size / 1024:.1f}"),
        ("window entries in memory", f"{entries:,}"),
    ]:
        print(row([label, value], widths, left=1))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=26.0)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--quick", action="store_true",
                        help="2 simulated hours instead of 26 (a smoke run)")
    args = parser.parse_args()
    hours = 2.0 if args.quick else args.hours
    # A 429 is logged as a warning; here the tables count them.
    logging.getLogger("pangocdp_async").setLevel(logging.ERROR)
    table_plain(hours, args.senders)
    table_conditions(hours, args.senders, stall_hours=min(2.0, hours))
    table_cost(2.0)


if __name__ == "__main__":
    main()
