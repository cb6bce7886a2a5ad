"""The scheduler's saved state: bounded, restored across processes, clock steps, crashes,
pauses and corrupt files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from pangocdp_async import DOCUMENTED_LIMITS, Margin, QuotaScheduler, RateLimit
from pangocdp_async.testing import Bucket4jBucket, run_in_virtual_time, scheduler_hooks
from pangocdp_async.testing import simulate_senders as simulate
from tests.conftest import ManualClock, open_store

T = TypeVar("T")
TWO = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
TEN = [RateLimit(10, 1.0)]
NO_MARGIN = Margin(0.0, 0.0)
EPOCH = 1_700_000_000.0


def virtual(main: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        return await main()
    return run_in_virtual_time(run())


def sched(limits: Sequence[RateLimit], wall: ManualClock, **kwargs: Any) -> QuotaScheduler:
    kwargs.setdefault("margin", NO_MARGIN)
    return QuotaScheduler(limits, wall_clock=wall, **kwargs)


async def send(s: QuotaScheduler, n: int) -> list[float]:
    out = []
    for _ in range(n):
        async with s.slot() as r:
            out.append(r.stamp)
    return out


def test_state_round_trip_across_clocks() -> None:
    """Exported state (epoch seconds) loads into a scheduler whose clock has another origin."""
    async def main() -> float:
        loop = asyncio.get_running_loop()
        wall = ManualClock(EPOCH)
        a = sched(TWO, wall)
        await send(a, 3)  # at 0, 0, 1 on the loop's clock
        state = a.export_state()
        await asyncio.sleep(1.0)
        wall.advance(1.0)
        b = sched(TWO, wall, clock_step_allowance=0.0,
                  clock=lambda: loop.time() + 500.0, sleep=asyncio.sleep)
        b.import_state({**state, "unsaved_limit": 0})
        return (await send(b, 1))[0] - 500.0
    # a's sends at 0, 0, 1 fill the 10-s window until 10 (on a's clock)
    assert virtual(main) == pytest.approx(10.0)


def test_restore_charges_unsaved_and_in_flight_sends() -> None:
    """A crash loses the sends after the last save: up to 2 x save_every of them are charged,
    and the sends that were in flight at the save."""
    async def main() -> int:
        wall = ManualClock(EPOCH)
        a = sched([RateLimit(100, 60.0)], wall, save_every=10)
        in_flight = [await a.reserve() for _ in range(3)]
        assert len(in_flight) == a.in_flight
        state = a.export_state()
        b = sched([RateLimit(100, 60.0)], wall)
        b.import_state(state)
        return b.window_usage()[0][1]
    assert virtual(main) == 23


def test_policies_load_each_others_state() -> None:
    """A token-bucket scheduler loads a sliding one's state and vice versa; each loads its own."""
    async def main() -> None:
        wall = ManualClock(EPOCH)
        sliding = sched(TWO, wall)
        await send(sliding, 2)
        tb = sched(TWO, wall, policy="token-bucket")
        tb.import_state({**sliding.export_state(), "unsaved_limit": 0})
        assert not tb.has_capacity()  # the 1-s window's two tokens are spent
        tb2 = sched(TWO, wall, policy="token-bucket")
        tb2.import_state({**tb.export_state(), "unsaved_limit": 0})
        assert not tb2.has_capacity()
        back = sched(TWO, wall)
        back.import_state({**tb.export_state(), "unsaved_limit": 0})
        assert [used for _, used in back.window_usage()] == [2, 2]
    virtual(main)


def test_sqlite_store_saves_and_restores(tmp_path: Path) -> None:
    """With a SQLite store, state is saved every save_every sends (in the background) and on
    close, and a new scheduler loads it on first use."""
    path = tmp_path / "quota.sqlite3"

    async def main() -> None:
        wall = ManualClock(EPOCH)
        a = sched(DOCUMENTED_LIMITS, wall, store=open_store(path, key="acct-1"),
                  save_every=5)
        await send(a, 7)
        assert a._saving is not None
        await a._saving
        saved = open_store(path, key="acct-1").load()
        assert saved is not None
        assert sum(saved["windows"][0]["n"]) == 4  # taken at the 5th start, 4 answered
        assert saved["in_flight"] == 1
        await a.close()
        b = sched(DOCUMENTED_LIMITS, wall, store=open_store(path, key="acct-1"))
        await send(b, 1)
        assert [used for _, used in b.window_usage()] == [8] * 5  # 7 restored, clean: none
        assert open_store(path, key="other").load() is None
    virtual(main)


@pytest.mark.slow
@pytest.mark.parametrize("hours", [pytest.param(0.5, id="30-min"), pytest.param(2.0, id="2-h")])
def test_saved_state_stays_small_after_hours_without_any_header(hours: float) -> None:
    """Hours at full rate on the documented windows, no X-Rate-Limit-Remaining: the saved
    state is under 64 KiB (before: every send ever made, 4 MB after 2 hours)."""
    async def main() -> int:
        s = QuotaScheduler(DOCUMENTED_LIMITS)
        server = Bucket4jBucket(DOCUMENTED_LIMITS, "greedy")
        result = await simulate(server=server, senders=8, duration_s=hours * 3600.0,
                                **scheduler_hooks(s, remaining_header=False))
        assert result.sent >= 0.99 * min(50_000 * hours, 1_000 + 5_000 * hours * 12)
        return len(orjson.dumps(s.export_state()))
    assert virtual(main) < 64 * 1024


@pytest.mark.parametrize("step", [1.0, -3600.0])
def test_clock_steps_between_save_and_load(step: float) -> None:
    """Ten sends fill a 10/1 s window; the state is saved; 0.3 s later a new process loads it
    with the wall clock stepped by +1 s or -1 h. The new process never starts within 1 s of
    the saved sends (+1 s step), and never waits longer than the window's span (-1 h step)."""
    async def main() -> float:
        loop = asyncio.get_running_loop()
        wall = ManualClock(EPOCH)
        a = sched(TEN, wall)
        stamps = await send(a, 10)
        state = a.export_state()
        await asyncio.sleep(0.3)
        wall.advance(0.3 + step)
        b = sched(TEN, wall)
        b.import_state({**state, "unsaved_limit": 0})
        restart = loop.time()
        first = (await send(b, 1))[0]
        assert first - restart <= 1.0 + 1e-6  # no wait beyond what the window needs
        return first - max(stamps)
    assert virtual(main) >= 1.0 - 1e-6


def test_restart_during_a_pause_keeps_the_pause(tmp_path: Path) -> None:
    """A 429 pause of 30 s, a crash 5 s in, a restart: the new process waits out the rest."""
    path = tmp_path / "quota.sqlite3"

    async def main() -> float:
        wall = ManualClock(EPOCH)
        a = sched(TEN, wall, store=open_store(path))
        await send(a, 1)
        until = a.on_rate_limited(29.0)
        await a.save()
        await asyncio.sleep(5.0)
        wall.advance(5.0)
        b = sched(TEN, wall, store=open_store(path), clock_step_allowance=0.0)
        probe = await b.reserve()
        second = asyncio.ensure_future(b.reserve())
        await asyncio.sleep(0.5)
        assert not second.done()  # the restored pause resumes with one probe
        b.complete(probe)
        b.complete(await second)
        return probe.stamp - until
    assert virtual(main) == pytest.approx(0.0, abs=1e-3)


def _valid_state() -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        s = sched(TEN, ManualClock(EPOCH))
        await send(s, 3)
        return s.export_state()
    return virtual(main)


def _broken(change: Callable[[dict[str, Any]], None]) -> bytes:
    state = _valid_state()
    change(state)
    return orjson.dumps(state)


def _negative_count(state: dict[str, Any]) -> None:
    state["windows"][0]["n"][0] = -1000


def _endless_pause(state: dict[str, Any]) -> None:
    state["paused_until"] = state["saved_at"] + 1e9


def _huge_in_flight(state: dict[str, Any]) -> None:
    state["in_flight"] = 10**12


@pytest.mark.parametrize("content", [
    b"not json", b'{"version": 2}', b'{"version": 99}', b"[1, 2]",
    _broken(_negative_count), _broken(_endless_pause), _broken(_huge_in_flight),
])
def test_corrupt_state_warns_and_starts_as_if_full(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt or foreign state row: a warning naming the file, then a safe start with every
    window modeled full (never a raw JSONDecodeError or KeyError from reserve())."""
    path = tmp_path / "quota.sqlite3"
    first = open_store(path)
    first.save({"version": 2})
    first.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE quota_state SET state = ?", (content,))

    async def main() -> list[int]:
        store = open_store(path)
        s = sched(TEN, ManualClock(EPOCH), store=store)
        with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
            r = await s.reserve()
        s.complete(r)
        used = [used for _, used in s.window_usage()]
        store.close()
        return used
    assert virtual(main) == [10]  # full, then drained at its own pace: one went out
    assert str(path) in caplog.text
    assert "starting as if every window were full" in caplog.text



def test_import_merges_with_what_the_scheduler_knows() -> None:
    """Importing an older, emptier snapshot into a scheduler that has been sending never
    forgets its own sends (before: they were replaced, and the window sent twice its
    capacity)."""
    async def main() -> tuple[int, int]:
        wall = ManualClock(EPOCH)
        old = sched(TEN, wall).export_state()
        s = sched(TEN, wall)
        await send(s, 10)
        s.import_state({**old, "unsaved_limit": 0})
        return s.window_usage()[0][1], len(await send(s, 1))
    used, _ = virtual(main)
    assert used == 10
