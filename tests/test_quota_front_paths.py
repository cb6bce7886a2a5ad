"""SharedQuotaScheduler's less travelled paths, on virtual time: a lease owed back by a waiter
that left (and what is logged when giving it back fails), what an ended event loop leaves
behind, the switch to the local share with work queued, the local share's settings, the
clock offset a local-share send is stamped with, and waking a waiter early."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaWaitError, RateLimit, SQLiteQuotaBackend
from pangocdp_async._constants import PAUSE_JITTER

from .test_quota_front import (
    _Hooked,
    _in_flight,
    _lose_the_reply_then_go_down,
    _wait_after_a_429_on_the_share,
)
from .test_quota_shared import SPAN, _backend, _now, _run, _shared


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == level]


def _bug() -> Any:
    async def hook(*_: Any) -> None:
        raise RuntimeError("a bug")
    return hook


def _sleep(seconds: float) -> Any:
    async def hook(*_: Any) -> None:
        await asyncio.sleep(seconds)
    return hook


# --- a lease owed back ---------------------------------------------------------------------------
async def _left_while_down(hooked: _Hooked, tmp_path: Path) -> None:
    _lose_the_reply_then_go_down(hooked)
    s = _shared(tmp_path, backend=hooked)
    with pytest.raises(QuotaWaitError):
        await s.reserve(max_wait=0.5)
    hooked.before.clear()
    hooked.before["complete"] = _bug()
    hooked.down = False
    assert await s.flush(timeout=60.0)
    await s.close()


async def _left_while_slow(hooked: _Hooked, tmp_path: Path) -> None:
    hooked.before["reserve"] = _sleep(2.0)
    hooked.before["complete"] = _bug()
    s = _shared(tmp_path, backend=hooked)
    with pytest.raises(QuotaWaitError):
        await s.reserve(max_wait=0.5)
    assert await s.flush(timeout=60.0)
    await s.close()


async def _cancelled_as_granted(hooked: _Hooked, tmp_path: Path) -> None:
    s = _shared(tmp_path, backend=hooked)
    task: asyncio.Task[Any] | None = None

    def cancel_now(result: Any) -> None:
        if task is not None:
            asyncio.get_running_loop().call_soon(task.cancel)
    hooked.after["reserve"] = cancel_now
    hooked.before["complete"] = _bug()
    task = asyncio.ensure_future(s.reserve())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await s.flush(timeout=60.0)
    await s.close()


@pytest.mark.parametrize("scenario", [_left_while_down, _left_while_slow, _cancelled_as_granted])
def test_a_lease_owed_back_whose_release_fails_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, scenario: Any) -> None:
    async def main() -> None:
        await scenario(_Hooked(_backend(tmp_path)), tmp_path)

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        _run(main())
    [error] = _messages(caplog, logging.ERROR)
    assert error.endswith(": release failed: a bug")


def test_a_waiter_cancelled_as_its_reservation_fails_is_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        task: asyncio.Task[Any] | None = None

        async def cancel_then_fail(*_: Any) -> None:
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)
            raise RuntimeError("a bug")
        hooked.before["reserve"] = cancel_then_fail
        task = asyncio.ensure_future(s.reserve())
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.close()

    _run(main())


def test_a_lease_given_back_on_redis_is_freed() -> None:
    """On Redis every argument is sent as text: the release of a lease granted to a waiter
    cancelled as it was granted goes through, and the quota holds no lease after."""
    pytest.importorskip("redis", reason="the Redis backend needs redis-py")
    from .quota_servers import redis_backend_factory

    async def main() -> tuple[int, bool]:
        async with redis_backend_factory() as make:
            backend = make(lambda: 1_700_000_000.0 + _now())
            hooked = _Hooked(backend)
            s = _shared(Path("."), backend=hooked)
            task: asyncio.Task[Any] | None = None

            def cancel_now(result: Any) -> None:
                if task is not None:
                    asyncio.get_running_loop().call_soon(task.cancel)
            hooked.after["reserve"] = cancel_now
            task = asyncio.ensure_future(s.reserve())
            with pytest.raises(asyncio.CancelledError):
                await task
            flushed = await s.flush(timeout=10.0)
            _, _, in_flight, _ = await backend.usage()
            await s.close()
            return in_flight, flushed

    assert asyncio.run(main()) == (0, True)


# --- what an ended loop leaves behind ------------------------------------------------------------
def test_close_on_the_next_loop_names_what_the_ended_loop_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The ended loop left a send granted and never completed (owed: a completion) and a
    reservation on its way (owed: its lease back); the backend is down when the next loop
    closes the scheduler."""
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)
    left: list[asyncio.Future[Any]] = []

    async def first() -> None:
        await s.reserve()
        hooked.before["reserve"] = _sleep(1.0)
        left.append(asyncio.ensure_future(s.reserve()))
        await asyncio.sleep(0.1)

    async def second() -> None:
        hooked.before.clear()
        hooked.down = True
        await s.close()
        hooked.down = False

    _run(first())
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        _run(second())
    [closing] = [m for m in _messages(caplog, logging.WARNING) if "at close" in m]
    assert ": 2 operations (complete, release) not applied at close" in closing


def test_a_usage_refresh_left_by_an_ended_loop_is_dropped(tmp_path: Path) -> None:
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)

    async def first() -> None:
        r = await s.reserve()
        hooked.before["complete"] = _sleep(1.0)
        s.complete(r)
        s.window_usage()  # queued behind the slow completion when the loop ends
        await asyncio.sleep(0.1)

    async def second() -> tuple[list[int], int]:
        hooked.before.clear()
        s.complete(await s.reserve())
        s.window_usage()
        assert await s.flush(timeout=60.0)
        used = [n for _, n in s.window_usage()]
        await s.close()
        return used, hooked.calls.count("usage")

    _run(first())
    assert _run(second()) == ([2], 1)


def test_after_a_429_completions_count_and_free_their_leases(tmp_path: Path) -> None:
    """After a 429 the backend ramps up again, comparing each completion's start with the
    pause: a completion made on this loop and one left by an ended loop both count."""
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)

    async def first() -> tuple[int, int]:
        r = await s.reserve()
        s.complete(r, rejected=True)
        s.on_rate_limited(0.0, r)
        assert await s.flush(timeout=60.0)
        await asyncio.sleep(2.0)
        s.complete(await s.reserve())
        assert await s.flush(timeout=60.0)
        held = await _in_flight(hooked.inner)
        await s.reserve()  # never completed: its loop ends
        return held

    async def second() -> tuple[int, int]:
        await s.usage()  # (the first operation on this loop settles what the last one left)
        held = await _in_flight(hooked.inner)
        await s.close()
        return held

    assert _run(first()) == (1, 0)
    assert _run(second()) == (2, 0)


def test_completing_a_reservation_twice_is_harmless(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        s = _shared(tmp_path)
        r = await s.reserve()
        s.complete(r)
        s.complete(r)
        assert await s.flush(timeout=60.0)
        held = await _in_flight(s.backend)  # type: ignore[arg-type]
        await s.close()
        return held

    assert _run(main()) == (1, 0)


# --- the switch to the local share ---------------------------------------------------------------
def test_work_queued_behind_the_reservation_that_fails_is_kept(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        r1 = await s.reserve()
        hooked.down = True
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0)  # its reservation is queued
        s.complete(r1)  # queued behind it
        s.complete(await asyncio.wait_for(head, 60.0))  # on the share
        hooked.down = False
        assert await s.flush(timeout=60.0)
        assert await s.flush(timeout=60.0)
        held = await _in_flight(hooked.inner)
        await s.close()
        return held

    assert _run(main()) == (2, 0)  # r1, and the share's send charged on the way back


def test_a_reservation_never_tried_owes_no_release_at_the_switch(tmp_path: Path) -> None:
    async def main() -> int:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        r1 = await s.reserve()
        hooked.down = True
        hooked.before["complete"] = _sleep(0.1)
        s.complete(r1)  # on its way, and failing
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))  # queued behind: never tried
        hooked.before.clear()
        mark = len(hooked.calls)
        hooked.down = False
        assert await s.flush(timeout=60.0)
        assert await s.flush(timeout=60.0)
        await s.close()
        return hooked.calls[mark:].count("complete")

    assert _run(main()) == 1  # r1's completion, and no release


def _share(tmp_path: Path, limits: list[RateLimit], **kwargs: Any) -> tuple[_Hooked, Any]:
    hooked = _Hooked(_backend(tmp_path))
    hooked.down = True
    s = _shared(tmp_path, backend=hooked, limits=limits, on_backend_down="local-share",
                local_share=2, **kwargs)
    return hooked, s


async def _gaps(s: Any, n: int) -> list[float]:
    starts = []
    for _ in range(n):
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        starts.append(_now())
    return [b - a for a, b in itertools.pairwise(starts)]


def test_the_local_share_keeps_the_policy(tmp_path: Path) -> None:
    """A token bucket of 4 per 10 s, halved: 2 a bucket, one back every 5 s (not a window)."""

    async def main() -> list[float]:
        hooked, s = _share(tmp_path, [RateLimit(4, 10.0)], policy="token-bucket")
        gaps = await _gaps(s, 3)
        hooked.down = False
        await s.close()
        return gaps

    gaps = _run(main())
    assert gaps[0] < 0.1
    assert 4.9 <= gaps[1] <= 5.7


def test_the_local_share_keeps_the_margin(tmp_path: Path) -> None:
    async def main() -> list[float]:
        hooked, s = _share(tmp_path, [RateLimit(2, 1.0)], margin=Margin(0.0, 0.0))
        gaps = await _gaps(s, 3)
        hooked.down = False
        await s.close()
        return gaps

    assert _run(main()) == pytest.approx([1.0, 1.0], abs=0.02)


def test_the_local_share_keeps_max_retry_after_and_the_jitter_source(tmp_path: Path) -> None:
    """A 429 on the share asks for 10 s: the share's pause is capped at max_retry_after (2 s,
    stretched by the jitter), and the same rng seed gives the same pause."""

    async def main(seed: int) -> float:
        path = tmp_path / str(seed)
        path.mkdir(exist_ok=True)
        hooked, s = _share(path, [RateLimit(10, 1.0)], max_retry_after=2.0,
                           retry_after_pad=0.0, rng=random.Random(seed))
        return await _wait_after_a_429_on_the_share(hooked, s, 10.0)

    first = _run(main(4))
    assert 2.0 <= first <= 2.0 * (1.0 + PAUSE_JITTER) + 0.01
    assert _run(main(4)) == first


def test_the_local_share_keeps_count_rejected(tmp_path: Path) -> None:
    async def main() -> float:
        hooked, s = _share(tmp_path, [RateLimit(2, 10.0)], count_rejected=True)
        s.complete(await asyncio.wait_for(s.reserve(), 60.0), rejected=True)
        t0 = _now()
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        waited = _now() - t0
        hooked.down = False
        await s.close()
        return waited

    assert _run(main()) >= 10.0


def test_max_wait_on_the_local_share(tmp_path: Path) -> None:
    """The share's next slot is 0.8 s away: max_wait=0.5 is refused at once, max_wait=5 waits."""

    async def main() -> tuple[float, float]:
        hooked, s = _share(tmp_path, [RateLimit(2, 1.0)])
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        await asyncio.sleep(SPAN - 0.8)
        t0 = _now()
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=0.5)
        refused_in = _now() - t0
        s.complete(await s.reserve(max_wait=5.0))
        granted_in = _now() - t0
        hooked.down = False
        await s.close()
        return refused_in, granted_in

    refused_in, granted_in = _run(main())
    assert refused_in < 0.01
    assert granted_in == pytest.approx(0.8, abs=0.02)


# --- the clock a local-share send is stamped with ------------------------------------------------
def test_a_429_for_a_share_send_older_than_another_processes_pause_is_stale(
        tmp_path: Path) -> None:
    """The backend runs on a wall clock far from the loop's. A send starts on the local share;
    another process records a 429 (a pause of about a second); then the share's send is
    answered 429 (retry-after 30 s): it started before that pause, so the pause stays short."""

    async def main() -> float:
        def wall() -> float:
            return 1_700_000_000.0 + _now()
        hooked = _Hooked(SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=wall, threaded=False))
        a = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        b = _shared(tmp_path, backend=SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=wall,
                                                         threaded=False))
        a.complete(await a.reserve())  # (a learns the backend's clock)
        hooked.down = True
        ra = await asyncio.wait_for(a.reserve(), 60.0)  # on the share
        await asyncio.sleep(0.1)
        rb = await b.reserve()
        b.complete(rb, rejected=True)
        b.on_rate_limited(0.0, rb)
        assert await b.flush(timeout=60.0)
        a.complete(ra, rejected=True)
        a.on_rate_limited(30.0, ra)
        hooked.down = False
        assert await a.flush(timeout=60.0)
        assert await a.flush(timeout=60.0)
        t0 = _now()
        b.complete(await b.reserve())
        waited = _now() - t0
        await a.close()
        await b.close()
        return waited

    assert _run(main()) < 2.0


# --- waking a waiter early -----------------------------------------------------------------------
def test_a_slot_freed_by_this_process_wakes_the_waiter_at_once(tmp_path: Path) -> None:
    """Every slot is in flight, so the waiter polls (here every second); a send of this process
    that never left frees its slot: the waiter does not wait out its poll."""

    async def main() -> float:
        s = _shared(tmp_path, limits=[RateLimit(1, 1.0)], poll_interval=1.0)
        r = await s.reserve()
        waiter = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0.3)
        t0 = _now()
        s.complete(r, counted=False)
        s.complete(await waiter)
        waited = _now() - t0
        await s.close()
        return waited

    assert _run(main()) < 0.05


def test_a_waiter_asks_again_when_the_backend_comes_back(tmp_path: Path) -> None:
    async def main() -> int:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(1, 1.0)])
        s.complete(await s.reserve())
        waiter = asyncio.ensure_future(s.reserve())  # told: 1.1 s
        await asyncio.sleep(0.1)
        hooked.down = True
        s.on_remaining(0)  # fails until the backend is back
        await asyncio.sleep(0.3)
        hooked.down = False
        s.complete(await waiter)
        await s.close()
        return hooked.calls.count("reserve")

    assert _run(main()) == 4  # the first send; the waiter: told 1.1 s, back, granted


def test_without_windows_the_return_of_the_backend_charges_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No windows at all (no client-side pacing): the local share sends freely and, when the
    backend is back, there is nothing to charge; the log says 0 sends."""

    async def main() -> bool:
        hooked, s = _share(tmp_path, [])
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        await asyncio.sleep(0.5)
        hooked.down = False
        flushed: bool = await s.flush(timeout=60.0)
        await s.close()
        return flushed

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        assert _run(main())
    [back] = [m for m in _messages(caplog, logging.WARNING) if "is back" in m]
    assert back.endswith(" s; charging it the 0 sends made on the local share")


def test_charges_for_the_local_share_that_fail_with_a_bug_are_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two charges follow an outage: what the share sent (when the backend is back) and a send
    granted on the share after that. Each one that fails is logged by name."""

    async def main() -> None:
        hooked, s = _share(tmp_path, [RateLimit(2, 10.0)])  # the share: one a window
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        head = asyncio.ensure_future(s.reserve())  # waits ~11 s on the share
        await asyncio.sleep(2.0)
        hooked.before["charge"] = _bug()
        hooked.down = False
        assert await s.flush(timeout=60.0)
        s.complete(await asyncio.wait_for(head, 60.0))
        assert await s.flush(timeout=60.0)
        await s.close()

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        _run(main())
    errors = [m for m in _messages(caplog, logging.ERROR) if "unreachable" not in m]
    assert len(errors) == 2
    assert all(m.endswith(": charge failed: a bug") for m in errors)


def test_reservations_on_the_local_share_continue_the_numbering(tmp_path: Path) -> None:
    async def main() -> list[int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(10, 10.0)],
                    on_backend_down="local-share", local_share=2)
        seqs = []
        for down in (False, True, True):
            hooked.down = down
            r = await asyncio.wait_for(s.reserve(), 60.0)
            seqs.append(r.seq)
            s.complete(r)
        hooked.down = False
        await s.close()
        return seqs

    assert _run(main()) == [1, 2, 3]
