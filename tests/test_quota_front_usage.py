"""SharedQuotaScheduler's view of the shared quota (window_usage / next_free: refreshed from
the backend at most every 0.5 s, one request at a time) and what it does when an operation
fails with something other than an outage (a bug, a configuration conflict): the error is
logged or handed to the waiter, and the operations behind it are still applied."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import RateLimit
from pangocdp_async.testing import VirtualTimeLoop

from .test_quota_front import _Hooked, _in_flight
from .test_quota_shared import SPAN, _backend, _run, _shared

WINDOW = RateLimit(2, 1.0)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == logging.ERROR]


def test_window_usage_and_next_free_are_refreshed_at_most_every_half_second(
        tmp_path: Path) -> None:
    async def main() -> list[Any]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[WINDOW])
        s.complete(await s.reserve())
        assert await s.flush(timeout=60.0)
        seen: list[Any] = []

        async def look() -> None:
            seen.append(([n for _, n in s.window_usage()], s.next_free()))
            seen.append([n for _, n in s.window_usage()])  # asked again at once
            assert await s.flush(timeout=60.0)
            seen.append(hooked.calls.count("usage"))
        await look()  # nothing known yet: asks the backend (once)
        await look()  # the answer: one send, a slot free now; not asked again so soon
        s.complete(await s.reserve())
        assert await s.flush(timeout=60.0)
        await look()  # still the answer of a moment ago
        await asyncio.sleep(0.5)
        await look()  # half a second later: asked again
        await look()  # the window is full until the first send leaves it
        await s.close()
        return seen

    seen = _run(main())
    assert seen[:12] == [([0], 0.0), [0], 1, ([1], 0.0), [1], 1, ([1], 0.0), [1], 1,
                         ([1], 0.0), [1], 2]
    (used, free), _, asked = seen[12:]
    assert (used, asked) == ([2], 2)
    assert free == pytest.approx(SPAN - 0.5, abs=1e-3)


def test_a_failed_usage_refresh_is_logged_and_asked_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[list[int], int]:
        hooked = _Hooked(_backend(tmp_path))

        async def broken(*_: Any) -> None:
            raise RuntimeError("disk on fire")
        hooked.before["usage"] = broken
        s = _shared(tmp_path, backend=hooked, limits=[WINDOW])
        s.complete(await s.reserve())
        s.window_usage()
        assert await s.flush(timeout=60.0)
        hooked.before.clear()
        s.window_usage()  # the failed refresh does not block the next one
        assert await s.flush(timeout=60.0)
        used = [n for _, n in s.window_usage()]
        await s.close()
        return used, hooked.calls.count("usage")

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        used, asked = _run(main())
    assert (used, asked) == ([1], 2)
    errors = _errors(caplog)
    assert len(errors) == 1
    assert errors[0].startswith("quota backend <")
    assert "usage failed: disk on fire" in errors[0]


def test_a_failed_completion_is_logged_and_what_follows_is_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A completion fails with a bug (not an outage): it is logged naming the operation, the
    reservation queued behind it is still served, and a refresh pending meanwhile is not asked
    twice."""

    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[WINDOW])
        r = await s.reserve()

        async def broken(*_: Any) -> None:
            raise RuntimeError("a bug")

        async def slow(*_: Any) -> None:
            await asyncio.sleep(0.1)
        hooked.before["complete"] = broken
        hooked.before["usage"] = slow
        s.complete(r)
        s.window_usage()  # queued behind the completion
        await asyncio.sleep(0.05)  # the completion failed; the refresh is on its way
        s.window_usage()
        hooked.before.clear()
        r2 = await asyncio.wait_for(s.reserve(), 5.0)  # queued behind: served
        s.complete(r2)
        assert await s.flush(timeout=60.0)
        await s.close()
        return hooked.calls.count("usage"), s.reservations

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        asked, reservations = _run(main())
    assert (asked, reservations) == (1, 2)
    errors = _errors(caplog)
    assert len(errors) == 1
    assert errors[0].startswith("quota backend <")
    assert "complete failed: a bug" in errors[0]


def test_a_reservation_queued_behind_a_failing_operation_is_served(tmp_path: Path) -> None:
    async def main() -> int:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()

        async def broken(*_: Any) -> None:
            raise RuntimeError("a bug")
        hooked.before["complete"] = broken
        s.complete(r)
        r2 = await asyncio.wait_for(s.reserve(), 5.0)
        hooked.before.clear()
        s.complete(r2)
        await s.close()
        return s.reservations

    assert _run(main()) == 2


def test_a_failure_the_waiter_sees_is_raised_to_it_not_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        hooked = _Hooked(_backend(tmp_path))

        async def broken(*_: Any) -> None:
            raise RuntimeError("a bug")
        hooked.before["usage"] = broken
        s = _shared(tmp_path, backend=hooked)
        with pytest.raises(RuntimeError, match="a bug"):
            await s.usage()
        await s.close()

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        _run(main())
    assert _errors(caplog) == []


def test_a_failure_after_its_waiter_left_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))

        async def slow_then_broken(*_: Any) -> None:
            await asyncio.sleep(1.0)
            raise RuntimeError("a bug")
        hooked.before["usage"] = slow_then_broken
        s = _shared(tmp_path, backend=hooked)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(s.usage(), 0.5)
        await asyncio.sleep(1.0)
        hooked.before.clear()
        assert await s.flush(timeout=60.0)
        await s.close()
        return await _in_flight(hooked.inner)

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        assert _run(main()) == (0, 0)
    errors = _errors(caplog)
    assert len(errors) == 1
    assert errors[0].startswith("quota backend <")
    assert errors[0].endswith(": usage failed after its waiter left: a bug")


def test_the_first_look_on_a_loop_asks_the_backend(tmp_path: Path) -> None:
    """Before this process sent anything, window_usage() shows what the others sent."""

    async def main() -> list[int]:
        other = _shared(tmp_path, limits=[WINDOW])
        other.complete(await other.reserve())
        await other.close()
        s = _shared(tmp_path, backend=_backend(tmp_path), limits=[WINDOW])
        s.window_usage()
        assert await s.flush(timeout=60.0)
        used = [n for _, n in s.window_usage()]
        await s.close()
        return used

    assert _run(main()) == [1]


def test_usage_is_asked_again_exactly_half_a_second_after_the_last_answer(
        tmp_path: Path) -> None:
    async def main() -> list[int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[WINDOW])
        answered: list[float] = []
        loop = asyncio.get_running_loop()
        hooked.after["usage"] = lambda _: answered.append(loop.time())
        s.complete(await s.reserve())
        s.window_usage()
        assert await s.flush(timeout=60.0)
        asked = [hooked.calls.count("usage")]
        assert isinstance(loop, VirtualTimeLoop)
        loop.advance(answered[-1] + 0.25 - loop.time())
        s.window_usage()  # a quarter of a second: not yet
        assert await s.flush(timeout=60.0)
        asked.append(hooked.calls.count("usage"))
        loop.advance(answered[-1] + 0.5 - loop.time())
        s.window_usage()  # half a second to the tick
        assert await s.flush(timeout=60.0)
        asked.append(hooked.calls.count("usage"))
        await s.close()
        return asked

    assert _run(main()) == [1, 1, 2]
