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
from typing import Any

from .._config import Margin, RateLimit
from ._bucket4j import Bucket4jBucket, ConsumeResult

__all__ = [
    "SimulationResult",
    "greedy_server_ceiling",
    "simulate_senders",
    "sliding_ceiling",
    "token_bucket_ceiling",
]


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


async def simulate_senders(
    acquire: Callable[[], Awaitable[Any]],
    server: Bucket4jBucket,
    *,
    senders: int = 64,
    duration_s: float,
    latency_s: tuple[float, float] = (0.02, 0.08),
    on_rejected: Callable[[ConsumeResult], Any] | None = None,
    on_accepted: Callable[[ConsumeResult, float], Any] | None = None,
    keep_arrivals: bool = False,
    seed: int = 0,
) -> SimulationResult:
    """Run ``senders`` tasks that each loop: ``await acquire()``, send, await the answer.

    Each leg of a request (to the server, back) takes a latency drawn uniformly from
    ``latency_s``, so requests overtake each other. The server decides on arrival. Sending
    stops at ``duration_s`` on the loop's clock (started at the loop's current time).
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    lo, hi = latency_s
    start = loop.time()
    end = start + duration_s
    result = SimulationResult()

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
        loop.call_later(rng.uniform(lo, hi), future.set_result, verdict)

    async def sender() -> None:
        while True:
            await acquire()
            sent_at = loop.time()
            if sent_at >= end:
                return
            result.sent += 1
            future: asyncio.Future[ConsumeResult] = loop.create_future()
            loop.call_later(rng.uniform(lo, hi), arrive, future)
            verdict = await future
            if verdict.accepted:
                if on_accepted is not None:
                    on_accepted(verdict, loop.time() - sent_at)
            elif on_rejected is not None:
                on_rejected(verdict)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return result


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
