"""Regression tests for bugs that surviving mutants revealed in SharedQuotaScheduler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pangocdp_async import RateLimit, SharedQuotaScheduler

from .test_quota_front import _Hooked, _in_flight
from .test_quota_shared import _backend, _run, _shared


def test_the_first_refresh_on_a_loop_is_asked_once(tmp_path: Path) -> None:
    async def main() -> int:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(2, 1.0)])
        s.window_usage()
        s.next_free()
        assert await s.flush(timeout=60.0)
        await s.close()
        return hooked.calls.count("usage")

    assert _run(main()) == 1


def test_usage_is_refreshed_once_an_unnamed_scheduler_is_named(tmp_path: Path) -> None:
    async def main() -> list[int]:
        s = SharedQuotaScheduler(_backend(tmp_path), [RateLimit(2, 1.0)])
        for _ in range(2):
            with pytest.raises(RuntimeError, match="pass namespace="):
                s.window_usage()
        s.bind_credential("the-api-key")
        s.complete(await s.reserve())
        s.window_usage()
        assert await s.flush(timeout=60.0)
        used = [n for _, n in s.window_usage()]
        await s.close()
        return used

    assert _run(main()) == [1]


def test_close_on_a_new_loop_settles_a_send_the_ended_loop_left_in_flight(
        tmp_path: Path) -> None:
    """Nothing queued, one send granted and never completed when its loop ended: close() on
    the next loop counts it as a send (it may have reached the server) and frees its lease,
    as it does when something is queued too."""
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)

    async def first() -> None:
        await s.reserve()

    async def second() -> tuple[int, int]:
        await s.close()
        return await _in_flight(hooked.inner)

    _run(first())
    assert _run(second()) == (1, 0)


def test_close_fails_a_head_waiting_on_the_local_share(tmp_path: Path) -> None:
    """The backend is down and the local share is spent: close() fails the head waiting on
    the share (it does not get a slot after the close), and the share serves again after."""

    async def main() -> tuple[bool, bool, int]:
        hooked = _Hooked(_backend(tmp_path))
        hooked.down = True
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(2, 10.0)],
                    on_backend_down="local-share", local_share=2)
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        head = asyncio.ensure_future(s.reserve())
        second = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        await s.close()
        await asyncio.sleep(0)
        failed = head.cancelled() and second.cancelled()
        r = await asyncio.wait_for(s.reserve(), 60.0)  # the share, once its window has passed
        s.complete(r)
        hooked.down = False
        await s.close()
        return failed, r.stamp == float("inf"), s.reservations

    assert _run(main()) == (True, True, 2)
