"""SharedQuotaScheduler.close(): it applies what is queued (waiting up to 2 s for a backend that
is slow or down), fails the senders waiting for a slot and a pending usage() question, gives
back a lease whose reservation is still on its way, says what it could not apply, and closes
the backend's connections. A scheduler may be closed more than once and used again."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import RateLimit, SharedQuotaScheduler

from .test_quota_front import _Hooked, _in_flight
from .test_quota_shared import LIMITS, _backend, _now, _run, _shared


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == logging.WARNING]


def _not_applied(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in _warnings(caplog) if "not applied at close" in m]


async def _sleep_then(seconds: float) -> Any:
    async def hook(*_: Any) -> None:
        await asyncio.sleep(seconds)
    return hook


def test_close_with_the_backend_down_says_what_it_could_not_apply(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[str, list[bool]]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, lease_ttl=90.0, limits=[RateLimit(10, 1.0)])
        r1, r2 = await s.reserve(), await s.reserve()
        s.window_usage()
        assert await s.flush(timeout=60.0)
        hooked.down = True
        s.complete(r1)
        s.complete(r2, rejected=True)
        s.on_rate_limited(1.0, r2)
        s.on_remaining(3, r1)
        waiters = [asyncio.ensure_future(s.drain()), asyncio.ensure_future(s.flush()),
                   asyncio.ensure_future(s.usage())]
        await asyncio.sleep(0.6)
        s.window_usage()  # a refresh (not worth a warning)
        await s.close()
        await asyncio.sleep(0)
        return repr(hooked), [w.cancelled() for w in waiters]

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        backend, cancelled = _run(main())
    assert cancelled == [True, True, True]
    [message] = _not_applied(caplog)
    assert message.startswith(f"quota backend {backend}: ")
    assert ": 6 operations (complete, drain, flush, rate_limited, remaining) not applied at " \
           "close " in message
    assert message.endswith(" (a lease expires after 90 s)")


def test_close_applies_what_a_slow_backend_has_queued(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[tuple[int, int], list[str]]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        hooked.before["complete"] = await _sleep_then(0.5)
        s.complete(r)
        await s.close()
        hooked.before.clear()
        return await _in_flight(hooked.inner), hooked.calls

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        held, calls = _run(main())
    assert held == (1, 0)
    assert calls[-1] == "close"  # and the backend's connections are released
    assert _not_applied(caplog) == []


def test_close_cancels_a_usage_question_and_answers_drain_and_flush(tmp_path: Path) -> None:
    async def main() -> tuple[bool, Any, Any]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        hooked.before["complete"] = await _sleep_then(0.5)
        s.complete(r)
        usage = asyncio.ensure_future(s.usage())
        drain = asyncio.ensure_future(s.drain())
        flush = asyncio.ensure_future(s.flush())
        await asyncio.sleep(0)
        await s.close()
        await asyncio.sleep(0)
        return usage.cancelled(), drain.result(), flush.result()

    assert _run(main()) == (True, None, True)


def test_close_after_a_reservation_refused_for_want_of_a_namespace(tmp_path: Path) -> None:
    async def main() -> bool:
        hooked = _Hooked(_backend(tmp_path))
        s = SharedQuotaScheduler(hooked, LIMITS)
        with pytest.raises(RuntimeError, match="namespace="):
            await s.reserve()
        await s.close()
        return "close" in hooked.calls

    assert _run(main())


def _late_reply(hooked: _Hooked, delay: float = 10.0) -> None:
    """The reservation is applied at once; its reply takes ``delay`` seconds."""

    async def applied_then_slow(lease_ttl: float, lease: int) -> None:
        await hooked.inner.reserve(lease_ttl, lease)
        await asyncio.sleep(delay)
    hooked.before["reserve"] = applied_then_slow


def test_close_gives_back_a_lease_whose_reply_is_on_its_way(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[float, bool, tuple[int, int]]:
        hooked = _Hooked(_backend(tmp_path))
        _late_reply(hooked)
        s = _shared(tmp_path, backend=hooked)
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0.1)
        t0 = _now()
        await s.close()
        closed_in = _now() - t0
        await asyncio.sleep(0)
        return closed_in, head.cancelled(), await _in_flight(hooked.inner)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        closed_in, cancelled, held = _run(main())
    assert closed_in == pytest.approx(2.0, abs=0.05)  # its grace
    assert cancelled
    assert held == (0, 0)
    assert _not_applied(caplog) == []


def test_giving_back_a_lease_at_close_is_bounded_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The release hangs as well: close() gives up on it after a second and says the
    reservation was not settled."""

    async def main() -> float:
        hooked = _Hooked(_backend(tmp_path))
        _late_reply(hooked)
        hooked.before["complete"] = await _sleep_then(10.0)
        s = _shared(tmp_path, backend=hooked)
        head = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0.1)
        t0 = _now()
        await s.close()
        closed_in = _now() - t0
        await asyncio.sleep(0)
        assert head.cancelled()
        hooked.before.clear()
        return closed_in

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        closed_in = _run(main())
    assert closed_in == pytest.approx(3.0, abs=0.05)  # the grace, and a second for the release
    [message] = _not_applied(caplog)
    assert ": 1 operations (reserve) not applied" in message


def test_a_completion_stuck_at_close_is_reported_not_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        calls = 0

        async def first_one_hangs(*_: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(10.0)
        hooked.before["complete"] = first_one_hangs
        s.complete(r)
        await asyncio.sleep(0.1)
        await s.close()
        return await _in_flight(hooked.inner)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        held = _run(main())
    assert held == (0, 1)  # the lease expires in its time
    [message] = _not_applied(caplog)
    assert ": 1 operations (complete) not applied" in message


def test_closing_again_fails_a_head_waiting_for_the_window(tmp_path: Path) -> None:
    async def main() -> int:
        s = _shared(tmp_path)
        await s.close()
        for _ in range(5):
            s.complete(await s.reserve())

        async def close_soon() -> None:
            await asyncio.sleep(0.1)
            await s.close()
        closing = asyncio.ensure_future(close_soon())
        with pytest.raises(asyncio.CancelledError, match=r"^the SharedQuotaScheduler was closed$"):
            await s.reserve()  # the window is full: it waits
        await closing
        await asyncio.sleep(3.0)
        return s.reservations

    assert _run(main()) == 5


def test_close_from_another_loop_leaves_this_loops_senders_alone(tmp_path: Path) -> None:
    """A loop in another thread closes the scheduler while this loop has a send in flight and
    a completion queued: that close does not fail (this loop still serves its own)."""

    async def main() -> list[BaseException]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r1, r2 = await s.reserve(), await s.reserve()
        s.complete(r1)  # queued
        errors: list[BaseException] = []

        def elsewhere() -> None:
            try:
                asyncio.run(s.close())
            except BaseException as exc:
                errors.append(exc)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        s.complete(r2)
        await s.close()
        return errors

    assert _run(main()) == []


def test_close_fails_at_once_a_waiter_queued_behind_a_head_on_the_local_share(
        tmp_path: Path) -> None:
    async def main() -> bool:
        hooked = _Hooked(_backend(tmp_path))
        hooked.down = True
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(2, 10.0)],
                    on_backend_down="local-share", local_share=2)
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        head = asyncio.ensure_future(s.reserve())  # the share is spent for 11 s
        second = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        await s.close()
        await asyncio.sleep(0)
        failed = second.cancelled()
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        hooked.down = False
        await s.close()
        return failed

    assert _run(main())


def test_flush_applies_what_a_loop_that_was_shut_down_left_queued(tmp_path: Path) -> None:
    """asyncio.run() cancels the worker as its loop ends, a completion still queued: flush()
    on the next loop applies it."""
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)

    async def first() -> None:
        r = await s.reserve()
        hooked.before["complete"] = await _sleep_then(0.5)
        s.complete(r)
        await asyncio.sleep(0.01)  # the worker is applying it when the loop ends

    async def second() -> tuple[bool, tuple[int, int]]:
        hooked.before.clear()
        flushed = await s.flush(timeout=10.0)
        held = await _in_flight(hooked.inner)
        await s.close()
        return flushed, held

    asyncio.run(first())
    assert asyncio.run(second()) == (True, (1, 0))
