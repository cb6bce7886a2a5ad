"""The shared backends (the SQLite transaction, the Redis Lua script) against the local
scheduler: the same sequence of reservations, completions, 429s and remaining-counts, on the
same clock, gives the same slots (to the backends' microsecond resolution).

A random walk per seed drives both: at each step time moves on and one operation is applied to
the local :class:`QuotaScheduler` and to the backend. After every step the next slot each one
computes is compared, and a reservation is granted by both or by neither.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from pangocdp_async._limiter._backend import QuotaBackend, QuotaConfig

from .conftest import ManualClock
from .quota_servers import redis_backend_factory

# Two exact windows and a bucketed one, so both storage paths are walked.
LIMITS = (RateLimit(5, 1.0), RateLimit(12, 4.0), RateLimit(1_500, 30.0))
TOLERANCE = 3e-6  # the backends keep times to the microsecond, rounded up


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


BackendFactory = Callable[[Callable[[], float]], Any]


@pytest.fixture(params=["sqlite", "redis"])
async def backend_factory(request: pytest.FixtureRequest,
                          tmp_path: Path) -> AsyncIterator[BackendFactory]:
    if request.param == "sqlite":
        from pangocdp_async import SQLiteQuotaBackend

        yield lambda clock: SQLiteQuotaBackend(tmp_path / "quota.sqlite", clock=clock)
    else:
        async with redis_backend_factory() as make:
            yield make


def _local(policy: str, clock: ManualClock) -> QuotaScheduler:
    return QuotaScheduler(LIMITS, policy=policy, clock=clock, sleep=clock.sleep,  # type: ignore[arg-type]
                          rng=_NoJitter())


async def _walk(backend: QuotaBackend, local: QuotaScheduler, clock: ManualClock,
                rng: random.Random, steps: int) -> dict[str, int]:
    leases: list[tuple[Any, int, float]] = []  # local reservation, backend lease, stamp
    seen = {"granted": 0, "refused": 0, "429": 0, "remaining": 0, "completed": 0}
    for _ in range(steps):
        clock.advance(rng.choice((0.0, rng.expovariate(8.0), rng.expovariate(1.0),
                                  rng.uniform(0, 0.01))))
        roll = rng.random()
        if roll < 0.5 or not leases:
            local_due = local._due(clock.now)
            granted_local = local.try_reserve()
            now_b, lease, due_b = await backend.reserve(1e9)
            assert now_b == clock.now
            if lease is None:
                assert due_b > now_b
            if abs(local_due - clock.now) > TOLERANCE:
                assert (granted_local is not None) == (lease is not None), (local_due, due_b)
            if granted_local is None and lease is None:
                _close(clock.now, local_due, due_b)
                seen["refused"] += 1
            elif granted_local is not None and lease is not None:
                leases.append((granted_local, lease, now_b))
                seen["granted"] += 1
            else:  # on the boundary: keep both sides in step
                if granted_local is not None:
                    local.complete(granted_local, counted=False)
                if lease is not None:
                    await backend.complete(lease, now_b, False, False)
        elif roll < 0.8:
            r, lease, stamp = leases.pop(rng.randrange(len(leases)))
            counted = rng.random() > 0.1
            rejected = rng.random() < 0.1
            local.complete(r, counted=counted, rejected=rejected)
            await backend.complete(lease, stamp, counted, rejected)
            seen["completed"] += 1
        elif roll < 0.86:
            hint = rng.choice((None, 0.0, 1.0, 3.0))
            by = leases[-1][0] if leases and rng.random() < 0.5 else None
            local.on_rate_limited(hint, by)
            pause = (0.0 if hint is None else hint) + local.retry_after_pad
            await backend.rate_limited(None if by is None else by.stamp, pause)
            seen["429"] += 1
        else:
            model = min(w.remaining(clock.now) for w in local._windows) - local.in_flight
            remaining = max(0, model - rng.choice((0, 0, 1, 3, 8)) + rng.choice((0, 0, 2)))
            stamp_r = leases[0][0] if leases and rng.random() < 0.7 else None
            local_deficit = local.on_remaining(remaining, stamp_r)
            backend_deficit = await backend.remaining(
                remaining, None if stamp_r is None else stamp_r.stamp)
            assert abs(local_deficit - backend_deficit) <= 1, (local_deficit, backend_deficit)
            seen["remaining"] += 1
        _, used, in_flight, due = await backend.usage()
        assert in_flight == local.in_flight
        _close(clock.now, local._due(clock.now), due)
        local_used = [n for _, n in local.window_usage()]
        for a, b in zip(local_used, used, strict=True):
            assert abs(a - b) <= 1, (local_used, used)
    return seen


def _close(now: float, local_due: float, backend_due: float) -> None:
    """The next slot, ``max(due, now)``, is the same on both sides."""
    local_slot, backend_slot = max(now, local_due), max(now, backend_due)
    if math.isinf(local_slot) or math.isinf(backend_slot):
        assert local_slot == backend_slot, (local_due, backend_due)
        return
    assert abs(local_slot - backend_slot) <= TOLERANCE, (now, local_due, backend_due)


@pytest.mark.parametrize("policy", ["sliding", "token-bucket"])
@pytest.mark.parametrize("seed", range(4))
async def test_the_backend_gives_the_local_schedulers_slots(
        backend_factory: BackendFactory, policy: str, seed: int) -> None:
    clock = ManualClock(start=1_700_000_000.0 + seed * 1000.123)
    local = _local(policy, clock)
    backend = backend_factory(clock)
    backend.bind(f"equivalence-{policy}-{seed}", QuotaConfig.build(
        local.limits, policy, Margin(), False))
    try:
        seen = await _walk(backend, local, clock, random.Random(seed), 400)
    finally:
        await backend.close()
    # The walk went through every kind of step, and the windows both filled and drained.
    assert seen["granted"] >= 40, seen
    assert seen["refused"] >= 20, seen
    assert seen["429"] >= 5, seen
    assert seen["remaining"] >= 10, seen
