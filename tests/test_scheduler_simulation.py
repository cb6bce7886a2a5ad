"""The scheduler against a Bucket4j model of the server: 64 senders, the documented windows,
26 simulated hours on virtual time (seconds of real time)."""

from __future__ import annotations

import asyncio
import copy
import random
from pathlib import Path

import pytest

from pangocdp_async import DOCUMENTED_LIMITS, QuotaScheduler, RateLimit, SQLiteQuotaStore
from pangocdp_async.testing import Bucket4jBucket, run_in_virtual_time
from pangocdp_async.testing._bucket4j import Refill
from pangocdp_async.testing._simulation import (
    SimulationResult,
    simulate_senders,
    sliding_ceiling,
    token_bucket_ceiling,
)

HOURS_26 = 26 * 3600.0


def _run(scheduler: QuotaScheduler, server: Bucket4jBucket, hours: float) -> SimulationResult:
    async def main() -> SimulationResult:
        return await simulate_senders(
            scheduler.reserve, server, senders=64, duration_s=hours * 3600.0,
            on_rejected=lambda v: scheduler.on_rate_limited(float(v.retry_after_header)),
            on_accepted=lambda v, rtt: scheduler.on_remaining(v.remaining, rtt),
        )

    return run_in_virtual_time(main())


@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_sliding_26_hours_zero_rejections(refill: Refill) -> None:
    """Sliding policy: no 429 against greedy or interval refill (random phase), and at least
    99% of what the policy itself allows over 26 hours."""
    phase = random.Random(26).uniform(0, 86_400)
    server = Bucket4jBucket(DOCUMENTED_LIMITS, refill, phase=phase)
    scheduler = QuotaScheduler(DOCUMENTED_LIMITS, policy="sliding")
    result = _run(scheduler, server, 26)
    assert result.rejected == 0
    assert scheduler.rate_limited == 0
    assert result.accepted == result.sent
    ceiling = sliding_ceiling(DOCUMENTED_LIMITS, scheduler.margin, HOURS_26)
    assert ceiling == 500_000  # 400,000 in the first day, then 50,000 an hour
    assert result.sent / ceiling >= 0.99


def test_token_bucket_26_hours_zero_rejections_against_greedy() -> None:
    """Token-bucket policy: no 429 against greedy refill; at least 99% of its own maximum."""
    server = Bucket4jBucket(DOCUMENTED_LIMITS, "greedy")
    scheduler = QuotaScheduler(DOCUMENTED_LIMITS, policy="token-bucket")
    result = _run(scheduler, server, 26)
    assert result.rejected == 0
    ceiling = token_bucket_ceiling(DOCUMENTED_LIMITS, scheduler.margin, HOURS_26)
    assert result.sent / ceiling >= 0.99
    assert result.sent > 800_000  # the daily burst plus 4.63/s refill


def test_token_bucket_is_unsafe_against_interval_refill() -> None:
    """Why sliding is the default: a token bucket trusts refill that interval mode withholds.
    (The scheduler recovers through 429 feedback, but it does get rejected.)"""
    limits = [RateLimit(10, 1.0), RateLimit(100, 60.0)]
    server = Bucket4jBucket(limits, "interval", phase=0.5)
    scheduler = QuotaScheduler(limits, policy="token-bucket")
    result = _run(scheduler, server, 0.5)
    assert result.rejected > 0


# The documented windows with capacities divided by ten: the same shape (the daily window is
# the binding one after 8 hours of full use), a tenth of the simulated requests.
TENTH = [RateLimit(lim.max_requests // 10, lim.period) for lim in DOCUMENTED_LIMITS]


def test_restart_at_hour_5_keeps_zero_rejections(tmp_path: Path) -> None:
    """State saved at hour 5 and loaded by a new scheduler after a crash: the combined run has
    no 429. A scheduler started without the state, against the same server, is rejected."""
    path = tmp_path / "quota.sqlite3"
    server = Bucket4jBucket(TENTH, "greedy")

    async def main() -> tuple[SimulationResult, SimulationResult, SimulationResult]:
        loop = asyncio.get_running_loop()
        wall = loop.time  # the virtual clock doubles as epoch time here
        first = QuotaScheduler(TENTH, store=SQLiteQuotaStore(path), wall_clock=wall)
        before = await simulate_senders(first.reserve, server, duration_s=5 * 3600.0)
        # a crash: no close(); the state on disk is the last periodic save
        twin = copy.deepcopy(server)
        restored = QuotaScheduler(TENTH, store=SQLiteQuotaStore(path), wall_clock=wall)
        fresh = QuotaScheduler(TENTH, wall_clock=wall)
        after, control = await asyncio.gather(
            simulate_senders(restored.reserve, server, duration_s=8 * 3600.0,
                             on_rejected=lambda v: restored.on_rate_limited(0.0)),
            simulate_senders(fresh.reserve, twin, duration_s=8 * 3600.0,
                             on_rejected=lambda v: fresh.on_rate_limited(0.0), seed=1),
        )
        return before, after, control

    before, after, control = run_in_virtual_time(main())
    assert before.sent == 25_000  # 5,000 an hour
    assert before.rejected == 0
    assert after.rejected == 0
    assert after.sent >= 14_900  # the rest of the day's 40,000, less the charged unsaved sends
    assert before.sent + after.sent <= 40_000
    assert control.rejected > 0  # without the state the daily window is overrun
