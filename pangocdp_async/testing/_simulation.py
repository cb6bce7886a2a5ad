"""Many concurrent senders against a model of the server, on virtual time.

Used by the scheduler's tests and by ``benchmarks/limiter.py``; also handy to check a
configuration before pointing it at the real API. Run it inside :func:`run_in_virtual_time`.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict, TypeVar

from .._config import Margin, RateLimit
from .._limiter import QuotaScheduler, Reservation
from ._bucket4j import Bucket4jBucket, ConsumeResult

__all__ = [
    "SimulationResult",
    "greedy_server_ceiling",
    "lognormal_latency",
    "max_in_any_window",
    "pareto_latency",
    "random_stalls",
    "scheduler_hooks",
    "simulate_senders",
    "sliding_ceiling",
    "token_bucket_ceiling",
    "window_excess",
]

T = TypeVar("T")


Latency = tuple[float, float] | Callable[[random.Random], float]


def random_stalls(duration_s: float, *, seed: int = 0, every: tuple[float, float] = (5.0, 15.0),
                  length: tuple[float, float] = (0.3, 2.0)) -> list[tuple[float, float]]:
    """Event-loop stalls for :func:`simulate_senders`: ``(at, seconds)`` pairs, one blocking
    call of ``length`` seconds (uniform) every ``every`` seconds (uniform), up to
    ``duration_s``."""
    rng = random.Random(seed)
    out = []
    t = rng.uniform(1.0, every[0] + 5.0)
    while t < duration_s:
        out.append((t, rng.uniform(*length)))
        t += rng.uniform(*every)
    return out


def lognormal_latency(median_s: float, sigma: float) -> Callable[[random.Random], float]:
    """One leg's delay, lognormal: heavy-ish tail (sigma 1: p99 about 10x the median)."""
    mu = math.log(median_s)
    return lambda rng: rng.lognormvariate(mu, sigma)


def pareto_latency(alpha: float, scale_s: float) -> Callable[[random.Random], float]:
    """One leg's delay, Pareto: ``scale_s * Pareto(alpha)``; alpha 1.5 has infinite variance."""
    return lambda rng: scale_s * rng.paretovariate(alpha)


@dataclass
class SimulationResult:
    """What happened: requests sent, accepted and rejected by the model server."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    #: Arrival times (at the server) of every accepted request, if asked for.
    arrivals: list[float] = field(default_factory=list)
    #: Arrival times of the rejected requests.
    rejections: list[float] = field(default_factory=list)
    #: When each request was handed to the "transport", read off the loop's clock at that
    #: moment (not from the limiter's books), if asked for.
    sends: list[float] = field(default_factory=list)


async def simulate_senders(
    acquire: Callable[[], Awaitable[T]],
    server: Bucket4jBucket,
    *,
    release: Callable[[T, ConsumeResult | None], Any] | None = None,
    senders: int = 64,
    duration_s: float,
    latency_s: Latency = (0.02, 0.08),
    on_rejected: Callable[[ConsumeResult, T], Any] | None = None,
    on_accepted: Callable[[ConsumeResult, T], Any] | None = None,
    stalls: Sequence[tuple[float, float]] = (),
    foreign: Sequence[tuple[float, int]] = (),
    keep_arrivals: bool = False,
    keep_sends: bool = False,
    seed: int = 0,
) -> SimulationResult:
    """Run ``senders`` tasks that each loop: ``token = await acquire()``, send, await the answer,
    ``release(token, verdict)``, then ``on_accepted``/``on_rejected(verdict, token)``. (A
    sender that acquires after ``duration_s`` calls ``release(token, None)`` and stops.)

    Each leg of a request (to the server, back) takes a delay drawn from ``latency_s``: a
    ``(low, high)`` uniform range or a function of the simulation's ``random.Random``, so
    requests overtake each other. The server decides on arrival. Sending stops at
    ``duration_s`` on the loop's clock (started at the loop's current time).

    ``stalls``: ``(at, seconds)`` pairs, relative to the start: the event loop is blocked that
    long (a synchronous call, a GC pause), so every timer due meanwhile fires late, at once.
    Needs a :class:`VirtualTimeLoop`. ``foreign``: ``(at, n)`` pairs: another client sends
    ``n`` requests at once, taking tokens from the same server bucket.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    if callable(latency_s):
        leg: Callable[[], float] = partial(latency_s, rng)
    else:
        lo, hi = latency_s
        leg = partial(rng.uniform, lo, hi)
    start = loop.time()
    end = start + duration_s
    result = SimulationResult()

    def stall(seconds: float) -> None:
        advance = getattr(loop, "advance", None)
        if advance is None:
            raise TypeError("stalls need a VirtualTimeLoop")
        advance(seconds)

    def foreign_burst(n: int) -> None:
        now = loop.time()
        for _ in range(n):
            server.try_consume(now)

    for at, seconds in stalls:
        loop.call_at(start + at, stall, seconds)
    for at, n in foreign:
        loop.call_at(start + at, foreign_burst, n)

    def arrive(future: asyncio.Future[ConsumeResult]) -> None:
        # The server decides now; the answer reaches the sender after the return leg.
        now = loop.time()
        verdict = server.try_consume(now)
        if verdict.accepted:
            result.accepted += 1
            if keep_arrivals:
                result.arrivals.append(now)
        else:
            result.rejected += 1
            result.rejections.append(now)
        loop.call_later(leg(), future.set_result, verdict)

    async def sender() -> None:
        while True:
            token = await acquire()
            sent_at = loop.time()
            if sent_at >= end:
                if release is not None:
                    release(token, None)  # not sent; lets the senders queued behind it finish
                return
            result.sent += 1
            if keep_sends:
                result.sends.append(sent_at)
            future: asyncio.Future[ConsumeResult] = loop.create_future()
            loop.call_later(leg(), arrive, future)
            verdict = await future
            if release is not None:
                release(token, verdict)
            if verdict.accepted:
                if on_accepted is not None:
                    on_accepted(verdict, token)
            elif on_rejected is not None:
                on_rejected(verdict, token)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return result


class SchedulerHooks(TypedDict):
    acquire: Callable[[], Awaitable[Reservation]]
    release: Callable[[Reservation, ConsumeResult | None], None]
    on_accepted: Callable[[ConsumeResult, Reservation], Any] | None
    on_rejected: Callable[[ConsumeResult, Reservation], Any]


def scheduler_hooks(scheduler: QuotaScheduler, *, remaining_header: bool = True
                    ) -> SchedulerHooks:
    """Wire a :class:`~pangocdp_async.QuotaScheduler` into :func:`simulate_senders` as the
    client does: reserve, complete (a 429 is not counted, a request never sent is refunded),
    the 429's retry-after to
    :meth:`~pangocdp_async.QuotaScheduler.on_rate_limited`, and, if the server sends it,
    ``X-Rate-Limit-Remaining`` to :meth:`~pangocdp_async.QuotaScheduler.on_remaining`.

    >>> await simulate_senders(server=bucket, duration_s=60, **scheduler_hooks(s))  # doctest: +SKIP
    """
    def release(reservation: Reservation, verdict: ConsumeResult | None) -> None:
        scheduler.complete(reservation, counted=verdict is not None,
                           rejected=verdict is not None and not verdict.accepted)

    def on_rejected(verdict: ConsumeResult, reservation: Reservation) -> None:
        scheduler.on_rate_limited(float(verdict.retry_after_header), reservation)

    def on_accepted(verdict: ConsumeResult, reservation: Reservation) -> None:
        scheduler.on_remaining(verdict.remaining, reservation)

    return {
        "acquire": scheduler.reserve,
        "release": release,
        "on_accepted": on_accepted if remaining_header else None,
        "on_rejected": on_rejected,
    }


def max_in_any_window(times: Sequence[float], period: float) -> int:
    """The most of ``times`` (sorted) that fall in one closed interval of ``period`` seconds."""
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def window_excess(times: Sequence[float], limits: Sequence[RateLimit]) -> dict[RateLimit, int]:
    """For each limit, how far the busiest interval of its period goes over its capacity
    (0 where it never does)."""
    ordered = sorted(times)
    return {
        lim: max(0, max_in_any_window(ordered, lim.period) - lim.max_requests) for lim in limits
    }


def sliding_ceiling(limits: Sequence[RateLimit], margin: Margin, horizon: float) -> int:
    """Most sends in [0, horizon) with at most C in any interval of ``margin.widen(T)``,
    computed directly with exact timestamps: the ceiling of the sliding policy. With a zero
    margin it is the most any client can send without knowing an interval server's phase."""
    spans = [(lim.max_requests, margin.widen(lim.period)) for lim in limits]
    sends: list[float] = []
    t = 0.0
    while True:
        n = len(sends)
        for capacity, span in spans:
            if n >= capacity:
                t = max(t, sends[n - capacity] + span)
        if t >= horizon:
            return n
        sends.append(t)


def token_bucket_ceiling(limits: Sequence[RateLimit], margin: Margin, horizon: float) -> int:
    """Sends a full bucket of every window allows by ``horizon``: min over windows of
    C + horizon * C / widened period (a greedy shaper reaches the minimum of concave curves).
    With a zero margin it is what a greedy Bucket4j server accepts at most."""
    return math.floor(
        min(lim.max_requests * (1 + horizon / margin.widen(lim.period)) for lim in limits)
    )


def greedy_server_ceiling(limits: Sequence[RateLimit], horizon: float) -> int:
    """The most requests a greedy Bucket4j server accepts in [0, horizon]."""
    return token_bucket_ceiling(limits, Margin(0.0, 0.0), horizon)
