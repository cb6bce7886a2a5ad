"""The scheduler against a Bucket4j model of the server, on virtual time: the promise "never
rate-limited, nearly the whole allowance" under event-loop stalls, heavy-tailed networks, a
stray 429, a foreign burst, no headers and a restart.

The proofs over 26 simulated hours are marked ``slow`` (``make test-all`` and CI run them);
the default suite runs the same shapes over minutes.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from pangocdp_async import DOCUMENTED_LIMITS, Margin, QuotaScheduler, RateLimit
from pangocdp_async.testing import (
    Bucket4jBucket,
    ConsumeResult,
    Refill,
    SimulationResult,
    lognormal_latency,
    pareto_latency,
    random_stalls,
    run_in_virtual_time,
    scheduler_hooks,
    simulate_senders,
    sliding_ceiling,
    token_bucket_ceiling,
    window_excess,
)
from tests.conftest import open_store

HOUR = 3600.0
PHASE_SAFE = Margin(0.0, 0.0)
# Three phases of the server's interval refill, from one seeded generator.
_PHASE_RNG = random.Random(7)
PHASES = [round(_PHASE_RNG.uniform(0, 86_400), 1) for _ in range(3)]


def run(
    scheduler: QuotaScheduler,
    server: Bucket4jBucket,
    hours: float,
    *,
    header: bool = True,
    senders: int = 64,
    **kwargs: object,
) -> SimulationResult:
    async def main() -> SimulationResult:
        return await simulate_senders(
            server=server, senders=senders, duration_s=hours * HOUR, keep_sends=True,
            **scheduler_hooks(scheduler, remaining_header=header), **kwargs,  # type: ignore[arg-type]
        )
    return run_in_virtual_time(main())


def assert_never_over(result: SimulationResult, limits: Sequence[RateLimit]) -> None:
    """No window ever holds more than its capacity, counted at the moment of sending."""
    assert result.rejected == 0
    assert window_excess(result.sends, limits) == dict.fromkeys(limits, 0)


# --- stalls ---------------------------------------------------------------------------------
@pytest.mark.parametrize("refill", ["greedy", "interval"])
@pytest.mark.slow
def test_stalls_never_cause_a_rejection(refill: Refill) -> None:
    """10 minutes, documented windows, stalls of 0.3-2 s every ~10 s: 0 rejections and no
    window over capacity at the point of sending (before: 100 sends in one second)."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=PHASES[0])
    result = run(QuotaScheduler(), server, 1 / 6, stalls=random_stalls(HOUR / 6, seed=1))
    assert_never_over(result, DOCUMENTED_LIMITS)
    assert result.sent >= 5_000 * 2  # the 5-minute window's pace


@pytest.mark.slow
@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_stalls_for_two_hours(refill: Refill) -> None:
    """The issue's figure: 2 h with stalls, random phase: 0 rejections, no window exceeded at
    the transport, and at least 99% of the hourly window's 100,000."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=PHASES[1])
    result = run(QuotaScheduler(), server, 2, stalls=random_stalls(2 * HOUR, seed=2))
    assert_never_over(result, DOCUMENTED_LIMITS)
    assert result.sent >= 99_000


# --- heavy-tailed networks ------------------------------------------------------------------
@pytest.mark.slow
def test_lognormal_delays_against_interval_refill() -> None:
    """Legs of lognormal(median 30 ms, sigma 1), interval refill: 0 rejections in 15 minutes
    (before: 2-8 per hour with a fixed margin)."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, "interval", phase=PHASES[2])
    result = run(QuotaScheduler(), server, 0.25, latency_s=lognormal_latency(0.03, 1.0))
    assert_never_over(result, DOCUMENTED_LIMITS)


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_lognormal_delays_26_hours(phase: float) -> None:
    """26 h, lognormal legs, interval refill at three phases: 0 rejections and at least 98% of
    the phase-safe ceiling."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, "interval", phase=phase)
    result = run(QuotaScheduler(), server, 26, latency_s=lognormal_latency(0.03, 1.0))
    assert_never_over(result, DOCUMENTED_LIMITS)
    assert result.accepted >= 0.98 * sliding_ceiling(DOCUMENTED_LIMITS, PHASE_SAFE, 26 * HOUR)


@pytest.mark.slow
def test_pareto_delays_26_hours() -> None:
    """26 h, legs of 20 ms x Pareto(1.5) (infinite variance): at most 1 rejection per 10,000
    requests (measured: none)."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, "interval", phase=PHASES[0])
    result = run(QuotaScheduler(), server, 26, latency_s=pareto_latency(1.5, 0.02))
    assert result.rejected <= result.sent / 10_000
    assert result.accepted >= 0.98 * sliding_ceiling(DOCUMENTED_LIMITS, PHASE_SAFE, 26 * HOUR)


# --- 429s -----------------------------------------------------------------------------------
class _OneStray429(Bucket4jBucket):
    """A greedy server that answers the n-th request 429 with header 0 (a proxy's hiccup)."""

    def __init__(self, n: int | None) -> None:
        super().__init__(DOCUMENTED_LIMITS, "greedy")
        self._n = n
        self._seen = 0

    def try_consume(self, now: float) -> ConsumeResult:
        self._seen += 1
        if self._seen == self._n:
            self.rejected += 1
            return ConsumeResult(False, 0, 0.0)
        return super().try_consume(now)


@pytest.mark.parametrize(("records", "at", "seconds"), [
    (100, 1, 8), (1_000, 30, 30), pytest.param(2_000, 900, 90, marks=pytest.mark.slow)])
@pytest.mark.parametrize("header", [True, False])
def test_one_429_with_header_0_delays_a_run_by_under_3_s(
    records: int, at: int, seconds: float, header: bool
) -> None:
    """The time until the N-th accepted request, with and without one 429 (header 0) at
    request ``at``, documented windows: the 429 costs under 3 s (before: 12-95 s)."""
    def finish(n: int | None) -> float:
        result = run(QuotaScheduler(), _OneStray429(n), seconds / HOUR, header=header,
                     senders=8, keep_arrivals=True)
        return result.arrivals[records - 1]
    delay = finish(at) - finish(None)
    assert 0.5 <= delay < 3.0  # it does pause (header + 1 s), and not much more than that


class _Hiccups(Bucket4jBucket):
    """A greedy server behind a proxy that answers 429 (header 0) at given moments."""

    def __init__(self, at: list[float]) -> None:
        super().__init__(DOCUMENTED_LIMITS, "greedy")
        self._at = sorted(at)

    def try_consume(self, now: float) -> ConsumeResult:
        if self._at and now >= self._at[0]:
            self._at.pop(0)
            self.rejected += 1
            return ConsumeResult(False, 0, 0.0)
        return super().try_consume(now)


@pytest.mark.slow
def test_stray_429s_in_one_episode_cost_little_when_the_server_says_what_is_left() -> None:
    """Five stray 429s a minute apart escalate until every window, the daily one included, is
    modeled full; the next successes' X-Rate-Limit-Remaining undo that, so 10 minutes still
    deliver at least 97% of what they do without them (before: 4.6/s for a day)."""
    def accepted(at: list[float]) -> int:
        return run(QuotaScheduler(), _Hiccups(at), 1 / 6, senders=8).accepted
    clean = accepted([])
    assert accepted([60.0 + 30 * k for k in range(5)]) >= 0.97 * clean


@pytest.mark.slow
@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_foreign_burst_at_minute_23_costs_under_one_percent(refill: Refill) -> None:
    """26 h; at minute 23 another client sends 50 requests a second for 10 s (greedy refill
    gives back what a single burst takes before we notice) or 50 at once (interval refill,
    where a foreign send is a deficit for a whole period): at least 99% of the phase-safe
    ceiling is delivered."""
    start = 23 * 60.0
    burst = ([(start + k * 0.02, 1) for k in range(500)] if refill == "greedy"
             else [(start, 50)])
    server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=40_000.0)
    scheduler = QuotaScheduler()
    result = run(scheduler, server, 26, foreign=burst)
    assert scheduler.rate_limited >= 1  # the burst did cause a 429
    assert result.accepted >= 0.99 * sliding_ceiling(DOCUMENTED_LIMITS, PHASE_SAFE, 26 * HOUR)


# --- the long proofs ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_sliding_26_hours_zero_rejections(refill: Refill) -> None:
    """Sliding policy: no 429 against greedy or interval refill (random phase), and at least
    99% of the phase-safe ceiling over 26 hours."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=PHASES[1])
    scheduler = QuotaScheduler()
    result = run(scheduler, server, 26)
    assert_never_over(result, DOCUMENTED_LIMITS)
    assert scheduler.rate_limited == 0
    ceiling = sliding_ceiling(DOCUMENTED_LIMITS, PHASE_SAFE, 26 * HOUR)
    assert ceiling == 500_000  # 400,000 in the first day, then 50,000 an hour
    assert result.sent / ceiling >= 0.99


@pytest.mark.slow
def test_token_bucket_26_hours_zero_rejections_against_greedy() -> None:
    """Token-bucket policy: no 429 against greedy refill; at least 99% of its own maximum."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, "greedy")
    scheduler = QuotaScheduler(policy="token-bucket")
    result = run(scheduler, server, 26)
    assert result.rejected == 0
    ceiling = token_bucket_ceiling(DOCUMENTED_LIMITS, scheduler.margin, 26 * HOUR)
    assert result.sent / ceiling >= 0.99
    assert result.sent > 800_000  # the daily burst plus 4.63/s refill


def test_token_bucket_is_unsafe_against_interval_refill() -> None:
    """Why sliding is the default: a token bucket trusts refill that interval mode withholds.
    (It recovers through 429 feedback, but it does get rejected.)"""
    limits = [RateLimit(10, 1.0), RateLimit(100, 60.0)]
    server = Bucket4jBucket(limits, "interval", phase=0.5)
    result = run(QuotaScheduler(limits, policy="token-bucket"), server, 0.5)
    assert result.rejected > 0


# The documented windows with capacities divided by ten: the same shape (the daily window is
# the binding one after 8 hours of full use), a tenth of the simulated requests.
TENTH = [RateLimit(lim.max_requests // 10, lim.period) for lim in DOCUMENTED_LIMITS]


@pytest.mark.slow
def test_restart_at_hour_5_keeps_zero_rejections(tmp_path: Path) -> None:
    """State saved in the background during 5 hours, then a crash (no close) and a new
    scheduler loading it: the combined run has no 429. A scheduler started without the state,
    against a copy of the same server, is rejected."""
    path = tmp_path / "quota.sqlite3"
    server = Bucket4jBucket(TENTH, "greedy")

    async def main() -> tuple[SimulationResult, SimulationResult, SimulationResult]:
        loop = asyncio.get_running_loop()
        wall = loop.time  # the virtual clock doubles as epoch time here
        first = QuotaScheduler(TENTH, store=open_store(path), wall_clock=wall)
        before = await simulate_senders(server=server, duration_s=5 * HOUR,
                                        **scheduler_hooks(first))
        if first._saving is not None:
            await first._saving  # the last periodic save lands; then the process dies
        first._disarm()  # (a dead process saves nothing more)
        twin = copy.deepcopy(server)
        restored = QuotaScheduler(TENTH, store=open_store(path), wall_clock=wall)
        fresh = QuotaScheduler(TENTH, wall_clock=wall)
        after, control = await asyncio.gather(
            simulate_senders(server=server, duration_s=8 * HOUR, **scheduler_hooks(restored)),
            simulate_senders(server=twin, duration_s=8 * HOUR, seed=1,
                             **scheduler_hooks(fresh)),
        )
        await restored.close()
        return before, after, control

    before, after, control = run_in_virtual_time(main())
    assert before.sent == 25_000  # 5,000 an hour
    assert before.rejected == 0
    assert after.rejected == 0
    assert after.sent >= 14_800  # the rest of the day's 40,000, less the charged unsaved sends
    assert before.sent + after.sent <= 40_000
    assert control.rejected > 0  # without the state the daily window is overrun


def test_an_exhausted_long_window_is_found_within_one_429_per_window() -> None:
    """Another process has spent the hourly window (the server refills it greedily, one
    request per 3.6 s): each 429 models one more window full, shortest first, so after at
    most one 429 per window (plus the requests already in flight at the first) the scheduler
    paces at the hourly window's own rate and is never rejected again."""
    limits = [RateLimit(10, 1.0), RateLimit(100, 60.0), RateLimit(1_000, HOUR)]
    server = Bucket4jBucket([RateLimit(1_000, HOUR)], "greedy")
    for _ in range(1_000):
        server.try_consume(0.0)  # the other process
    scheduler = QuotaScheduler(limits)
    result = run(scheduler, server, 0.5, senders=8, keep_arrivals=True)
    assert len(result.rejections) <= len(limits) + 8
    assert max(result.rejections) < 60.0  # all in the first minute
    assert result.accepted >= 0.9 * 1_800 / 3.6  # then the hourly window's pace
