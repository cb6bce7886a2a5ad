"""SharedQuotaScheduler's front under production conditions, on virtual time: cancellation at
each await, close() at any moment, a backend whose answer is lost after it acted, a wall clock
that steps, a quota's settings changed, a scheduler moved between event loops, and the exact
figures of the 429 and remaining-count paths.

The invariant every test checks in its own way: a lease the backend granted is completed,
released or expires; nothing else holds a slot."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import (
    PangoCDPClient,
    QuotaBackendError,
    QuotaConfigError,
    QuotaWaitError,
    RateLimit,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
)
from pangocdp_async._constants import PAUSE_JITTER
from pangocdp_async._limiter._sqlite import HostClock
from pangocdp_async.testing import FakePangoCDP

from .test_quota_shared import LIMITS, SPAN, _backend, _now, _run, _shared


class _Hooked:
    """A backend with hooks: ``before[op]`` is awaited before an operation, ``after[op]`` sees
    its result; while ``down`` every operation raises; ``lose[op]`` (a count) applies the
    operation and then raises, as a reply lost after Redis ran the script."""

    name = "hooked"

    def __init__(self, inner: SQLiteQuotaBackend) -> None:
        self.inner = inner
        self.before: dict[str, Callable[..., Awaitable[None]]] = {}
        self.after: dict[str, Callable[[Any], None]] = {}
        self.lose: dict[str, int] = {}
        self.down = False
        self.calls: list[str] = []

    def bind(self, namespace: str, config: Any) -> None:
        self.inner.bind(namespace, config)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            self.calls.append(name)
            hook = self.before.get(name)
            if hook is not None:
                await hook(*args)
            if self.down and name != "close":
                raise QuotaBackendError("connection refused (test)")
            result = await method(*args)
            if self.lose.get(name, 0) > 0:
                self.lose[name] -= 1
                raise QuotaBackendError("timed out reading the reply (test)")
            after = self.after.get(name)
            if after is not None:
                after(result)
            return result
        return call


async def _in_flight(backend: SQLiteQuotaBackend) -> tuple[int, int]:
    """(sends on record in the one window, leases held) as ``backend``'s quota stands, read
    through a backend of its own (closed after)."""
    probe = SQLiteQuotaBackend(backend.path, clock=_now, threaded=False)
    probe.bind(backend._ns, backend._config)  # type: ignore[arg-type]
    try:
        _, used, in_flight, _ = await probe.usage()
    finally:
        await probe.close()
    return used[0] - in_flight, in_flight


async def _wait_after_a_429_on_the_share(hooked: _Hooked, s: SharedQuotaScheduler,
                                         retry_after: float) -> float:
    """The backend down, the local share serving: one send is answered 429 saying
    ``retry_after``; how long the next send then waits. Ends with the backend up and ``s``
    closed."""
    r = await asyncio.wait_for(s.reserve(), 60.0)
    s.complete(r, rejected=True)
    s.on_rate_limited(retry_after, r)
    t0 = _now()
    s.complete(await asyncio.wait_for(s.reserve(), 60.0))
    waited = _now() - t0
    hooked.down = False
    await s.close()
    return waited


def _lose_the_reply_then_go_down(hooked: _Hooked) -> None:
    """The next reservation is applied and its reply lost; its retries find the backend down."""
    hooked.lose["reserve"] = 1
    calls = 0

    async def then_down(*_: Any) -> None:
        nonlocal calls
        calls += 1
        hooked.down = calls >= 2
    hooked.before["reserve"] = then_down


async def _back_up_then_usage(hooked: _Hooked, s: SharedQuotaScheduler) -> list[int]:
    """The backend answers again: what was queued (the share's charge too) is applied, and the
    sends counted in each window are returned; the scheduler is closed."""
    hooked.down = False
    await s.flush()
    await s.flush()  # (the charge is queued when the backend comes back)
    used = [n for _, n in await s.usage()]
    await s.close()
    return used


# --- cancellation ------------------------------------------------------------------------------
@pytest.mark.parametrize("max_wait", [None, 5.0])
def test_a_waiter_cancelled_as_its_slot_is_granted_gives_the_slot_back(
        tmp_path: Path, max_wait: float | None) -> None:
    """The cancel lands after the backend granted the lease but before the waiter resumed: the
    waiter is cancelled (it never sends) and the lease goes back, so after a 429 (one send in
    flight allowed) another process is not held up for the lease's lifetime."""

    async def main() -> tuple[tuple[int, int], float]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, lease_ttl=60.0)
        other = _shared(tmp_path, lease_ttl=60.0)
        task: asyncio.Task[Any] | None = None

        def cancel_now(result: Any) -> None:
            if result[1] is not None and task is not None:
                asyncio.get_running_loop().call_soon(task.cancel)
        hooked.after["reserve"] = cancel_now
        task = asyncio.ensure_future(s.reserve(max_wait=max_wait))
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.flush()
        held = await _in_flight(hooked.inner)
        r = await other.reserve()
        other.complete(r, rejected=True)
        other.on_rate_limited(0.0, r)
        await other.flush()
        t0 = _now()
        other.complete(await other.reserve())
        waited = _now() - t0
        await s.close()
        await other.close()
        return held, waited

    held, waited = _run(main())
    assert held == (0, 0)
    assert waited < 2.0  # the pause (pad 1 s, jitter) and no 60 s lease


@pytest.mark.parametrize("op", ["usage", "drain"])
def test_a_cancelled_usage_or_drain_leaves_the_worker_serving(tmp_path: Path, op: str) -> None:
    async def main() -> bool:
        hooked = _Hooked(_backend(tmp_path))

        async def slow(*_: Any) -> None:
            await asyncio.sleep(1.0)
        hooked.before[op] = slow
        s = _shared(tmp_path, backend=hooked)
        call = s.usage() if op == "usage" else s.drain()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.5)
        hooked.before.clear()
        r = await asyncio.wait_for(s.reserve(), 30.0)  # queued behind: still applied
        s.complete(r)
        await s.flush()
        worker = s._worker
        await s.close()
        return worker is not None and (not worker.done() or worker.exception() is None)

    assert _run(main())


def test_close_fails_the_waiting_head_even_with_the_backend_down(tmp_path: Path) -> None:
    """The head's reservation is stuck on a backend that is down: close() fails it (it does not
    hang) within the close's grace, and the scheduler serves again once the backend is back."""

    async def main() -> tuple[bool, float, bool]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        hooked.down = True
        head = asyncio.ensure_future(s.reserve())
        second = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        t0 = _now()
        await s.close()
        closed_in = _now() - t0
        await asyncio.sleep(0)
        cancelled = head.cancelled() and second.cancelled()
        hooked.down = False
        r = await asyncio.wait_for(s.reserve(), 60.0)
        s.complete(r)
        await s.close()
        return cancelled, closed_in, (await _in_flight(hooked.inner))[1] == 0

    cancelled, closed_in, no_lease = _run(main())
    assert cancelled
    assert closed_in <= 2.1
    assert no_lease


def test_close_fails_a_head_that_paces_and_it_takes_no_slot(tmp_path: Path) -> None:
    async def main() -> tuple[bool, int]:
        s = _shared(tmp_path)
        for _ in range(5):
            s.complete(await s.reserve())
        head = asyncio.ensure_future(s.reserve())  # the window is full: it naps
        await asyncio.sleep(0.1)
        await s.close()
        await asyncio.sleep(3.0)
        granted = s.reservations
        return head.cancelled(), granted

    assert _run(main()) == (True, 5)


def test_a_cancelled_close_is_cancelled(tmp_path: Path) -> None:
    async def main() -> bool:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        hooked.down = True
        s.complete(r)  # cannot be applied: close() waits out its grace
        closing = asyncio.ensure_future(s.close())
        await asyncio.sleep(0.5)
        closing.cancel()
        try:
            await closing
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        hooked.down = False
        await s.close()
        return cancelled

    assert _run(main())


# --- answers lost after the backend acted --------------------------------------------------------
def test_a_reservation_whose_answer_was_lost_takes_one_lease(tmp_path: Path) -> None:
    """The backend granted the lease, the reply was lost (a Redis timeout after the script ran):
    the retry names the same lease and gets it, so nothing is left holding a slot."""

    async def main() -> tuple[tuple[int, int], int, int]:
        hooked = _Hooked(_backend(tmp_path))
        hooked.lose["reserve"] = 1
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        in_flight_during = (await _in_flight(hooked.inner))[1]
        s.complete(r)
        await s.flush()
        after = await _in_flight(hooked.inner)
        await s.close()
        return after, in_flight_during, s.backend_errors

    after, during, errors = _run(main())
    assert during == 1
    assert after == (1, 0)
    assert errors == 1


def test_a_completion_whose_answer_was_lost_counts_once(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        hooked.lose["complete"] = 2
        s.complete(r)
        await s.flush()
        await s.close()
        return await _in_flight(hooked.inner)

    assert _run(main()) == (1, 0)


def test_a_waiter_that_leaves_during_an_outage_leaves_no_lease(tmp_path: Path) -> None:
    """Its reservation may have been applied before the reply was lost; the waiter gives up
    (max_wait): the lease it may hold is released when the backend answers again."""

    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        _lose_the_reply_then_go_down(hooked)
        s = _shared(tmp_path, backend=hooked)
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=0.5)
        hooked.before.clear()
        hooked.down = False
        await s.flush()
        result = await _in_flight(hooked.inner)
        await s.close()
        return result

    assert _run(main()) == (0, 0)


# --- local share --------------------------------------------------------------------------------
def test_the_local_share_takes_over_even_behind_a_completion(tmp_path: Path) -> None:
    """With sends in flight a completion is usually queued ahead of the next reservation: the
    outage must still switch the reservation to the local share at once, not after it."""

    async def main() -> float:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(10, 10.0)],
                    on_backend_down="local-share", local_share=2)
        r = await s.reserve()
        hooked.down = True
        t0 = _now()
        s.complete(r)  # queued first, and fails
        r2 = await asyncio.wait_for(s.reserve(), 60.0)
        granted_after = _now() - t0
        s.complete(r2)
        hooked.down = False
        await s.flush()
        await s.close()
        return granted_after

    assert _run(main()) < 1.0


def test_a_429_on_a_local_share_send_pauses_the_other_processes(tmp_path: Path) -> None:
    """The stamp a local-share reservation carries is on the backend's clock (a wall clock far
    from the loop's), so a 429 recorded earlier does not make the backend take this one for
    stale."""

    async def main() -> float:
        wall = 1_700_000_000.0

        def clock() -> float:
            return wall + _now()
        hooked = _Hooked(SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=clock, threaded=False))
        a = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        b = _shared(tmp_path, backend=SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=clock,
                                                         threaded=False))
        r = await a.reserve()  # an earlier 429, on record
        a.complete(r, rejected=True)
        a.on_rate_limited(0.0, r)
        await a.flush()
        await asyncio.sleep(60.0)  # long over
        hooked.down = True
        r = await asyncio.wait_for(a.reserve(), 10.0)  # on the local share
        a.complete(r, rejected=True)
        a.on_rate_limited(2.0, r)
        hooked.down = False
        await a.flush()
        t0 = _now()
        b.complete(await b.reserve())
        waited = _now() - t0
        await a.close()
        await b.close()
        return waited

    assert _run(main()) >= 2.5  # 2 s + 1 s pad, less the backend's retry delay


# --- misuse ---------------------------------------------------------------------------------------
def test_one_backend_object_serves_one_scheduler(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    first = SharedQuotaScheduler(backend, LIMITS, namespace="a")
    with pytest.raises(ValueError, match="already serves another"):
        SharedQuotaScheduler(backend, LIMITS, namespace="b")
    del first  # once the first is gone, the object may serve a new one
    import gc
    gc.collect()
    SharedQuotaScheduler(backend, LIMITS, namespace="b")


async def test_namespace_given_wins_over_every_client_key(tmp_path: Path) -> None:
    limiter = SharedQuotaScheduler(SQLiteQuotaBackend(tmp_path / "q.sqlite"), LIMITS,
                                   namespace="team-quota")
    async with FakePangoCDP(rate_limits=None) as fake:
        for _ in range(2):
            async with PangoCDPClient(**fake.client_kwargs(), limiter=limiter) as client:
                await client.ingest("order", [{"orderId": "1"}], source="POS")
    assert limiter.namespace == "team-quota"
    await limiter.close()


def test_sqlite_paths_that_cannot_work_are_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory does not exist"):
        SQLiteQuotaBackend(tmp_path / "missing" / "q.sqlite")
    with pytest.raises(ValueError, match="is a directory"):
        SQLiteQuotaBackend(tmp_path)


def test_new_settings_take_over_a_quota_left_unused_for_its_longest_window(
        tmp_path: Path) -> None:
    async def main() -> None:
        a = _shared(tmp_path)
        a.complete(await a.reserve())
        await a.close()
        b = _shared(tmp_path, limits=[RateLimit(6, 1.0)])
        with pytest.raises(QuotaConfigError, match=r"given policy sliding, windows \[6/1s"):
            await b.reserve()
        await b.close()
        # (the longest window, 1.1 s, plus the lookback and a minute of slack)
        await asyncio.sleep(SPAN + 600.0 + 60.0 + 1.0)
        c = _shared(tmp_path, limits=[RateLimit(6, 1.0)])
        for _ in range(6):
            c.complete(await c.reserve())
        assert [n for _, n in await c.usage()] == [6]
        await c.close()

    _run(main())


# --- the clock --------------------------------------------------------------------------------
class _Host:
    """A host: a wall clock an operator can step, the time since boot, the boot's id."""

    def __init__(self) -> None:
        self.wall_offset = 1_700_000_000.0
        self.boot = "boot-1"
        self.booted_at = 0.0

    def clock(self) -> HostClock:
        return HostClock(wall=lambda: _now() + self.wall_offset,
                         since_boot=lambda: _now() - self.booted_at, boot_id=lambda: self.boot)


@pytest.mark.parametrize("step", [3600.0, -3600.0])
def test_a_wall_clock_step_does_not_move_the_quotas_clock(tmp_path: Path, step: float) -> None:
    """Two processes; the host's wall clock is stepped an hour between them: together they
    still never put more than 5 sends in a second, and a step back does not stop them."""

    async def main() -> list[float]:
        host = _Host()
        a = SQLiteQuotaBackend(tmp_path / "q.sqlite", threaded=False)
        a.host_clock = host.clock()
        b = SQLiteQuotaBackend(tmp_path / "q.sqlite", threaded=False)
        b.host_clock = host.clock()
        sa = SharedQuotaScheduler(a, LIMITS, namespace="ns")
        sb = SharedQuotaScheduler(b, LIMITS, namespace="ns")
        starts: list[float] = []
        for _ in range(5):
            sa.complete(await sa.reserve())
            starts.append(_now())
        host.wall_offset += step
        for _ in range(10):
            sb.complete(await sb.reserve())
            starts.append(_now())
        await sa.close()
        await sb.close()
        return starts

    starts = _run(main())
    in_first_second = sum(1 for t in starts if t < starts[0] + 1.0)
    assert in_first_second == 5
    assert starts[-1] - starts[0] < 3 * SPAN  # not held up an hour either


def test_after_a_reboot_the_clock_never_runs_behind_the_record(tmp_path: Path) -> None:
    async def main() -> tuple[float, float]:
        host = _Host()
        backend = SQLiteQuotaBackend(tmp_path / "q.sqlite", threaded=False)
        backend.host_clock = host.clock()
        s = SharedQuotaScheduler(backend, LIMITS, namespace="ns")
        s.complete(await s.reserve())
        await s.flush()
        before, _, _, _ = await backend.usage()
        host.boot, host.booted_at = "boot-2", _now()
        host.wall_offset -= 7200.0  # and the new boot's wall clock is two hours behind
        after, _, _, _ = await backend.usage()
        await s.close()
        return before, after

    before, after = _run(main())
    assert before <= after < before + 1.0


def test_without_a_boot_id_the_wall_clock_is_held_at_the_newest_time_on_record(
        tmp_path: Path) -> None:
    async def main() -> tuple[float, float]:
        host = _Host()
        backend = SQLiteQuotaBackend(tmp_path / "q.sqlite", threaded=False)
        backend.host_clock = HostClock(wall=lambda: _now() + host.wall_offset,
                                       boot_id=lambda: None)
        s = SharedQuotaScheduler(backend, LIMITS, namespace="ns")
        s.complete(await s.reserve())
        await s.flush()
        before, _, _, _ = await backend.usage()
        host.wall_offset -= 3600.0
        after, _, _, _ = await backend.usage()
        await s.close()
        return before, after

    before, after = _run(main())
    assert after == before


# --- event loops ----------------------------------------------------------------------------------
def test_a_completion_left_queued_when_a_loop_ends_is_applied_on_the_next(tmp_path: Path) -> None:
    s = _shared(tmp_path)

    async def first() -> None:
        s.complete(await s.reserve())  # queued; the loop ends before it is applied

    async def second() -> tuple[int, int]:
        await s.flush()
        result = await _in_flight(s.backend)  # type: ignore[arg-type]
        await s.close()
        return result

    _run(first())
    assert _run(second()) == (1, 0)


def test_a_scheduler_with_senders_on_a_running_loop_refuses_another(tmp_path: Path) -> None:
    s = _shared(tmp_path)

    async def hold() -> None:
        r = await s.reserve()  # in flight on this loop ...
        errors: list[BaseException] = []

        def elsewhere() -> None:  # ... while another thread's loop asks
            try:
                asyncio.run(s.reserve())
            except BaseException as exc:
                errors.append(exc)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert len(errors) == 1
        assert isinstance(errors[0], RuntimeError)
        assert re.fullmatch(r"this SharedQuotaScheduler has senders waiting or in flight on "
                            r"another event loop; a scheduler serves one loop at a time",
                            str(errors[0]))
        s.complete(r)
        await s.close()

    _run(hold())


def test_a_scheduler_without_a_namespace_says_what_to_do(tmp_path: Path) -> None:
    s = SharedQuotaScheduler(_backend(tmp_path), LIMITS)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="namespace="):
            await s.reserve()

    _run(main())


# --- the exact figures of the feedback paths ---------------------------------------------
@pytest.mark.parametrize(("retry_after", "hint"), [
    (2.0, 2.0), (None, 0.0), (float("nan"), 0.0), (-5.0, 0.0), (10_000.0, 300.0)])
def test_the_pause_of_a_429_is_the_hint_plus_the_pad_with_jitter(
        tmp_path: Path, retry_after: float | None, hint: float,
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[float, float, float]:
        a = _shared(tmp_path, rng=random.Random(7), max_retry_after=300.0, retry_after_pad=0.5)
        b = _shared(tmp_path)
        r = await a.reserve()
        a.complete(r, rejected=True)
        pause = a.on_rate_limited(retry_after, r)
        await a.flush()
        t0 = _now()
        b.complete(await b.reserve())
        waited = _now() - t0
        await a.close()
        await b.close()
        return pause, waited, random.Random(7).uniform(0.0, PAUSE_JITTER)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        pause, waited, jitter = _run(main())
    assert pause == pytest.approx((hint + 0.5) * (1.0 + jitter))
    assert pause - 0.05 <= waited <= pause + 0.05  # every process waits it out
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"for {pause:.1f} s" in messages
    assert ("absent" in messages) == (retry_after is None)
    assert ("capping the pause" in messages) == (hint == 300.0)


def test_a_remaining_count_charges_the_deficit_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, int, int, list[int]]:
        s = _shared(tmp_path, limits=[RateLimit(10, 1.0)])
        r = await s.reserve()
        s.complete(r)
        first = s.on_remaining(-1, r)  # nonsense: ignored
        second = s.on_remaining(3, r)  # the model says 9 left, the server 3: 6 unseen
        await s.flush()
        used = [n for _, n in await s.usage()]
        await s.close()
        return first, second, s.tightened, used

    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        first, second, tightened, used = _run(main())
    assert (first, second, tightened, used) == (0, 0, 6, [7])
    assert any("3 requests left: charging 6" in r.getMessage() for r in caplog.records)


def test_what_the_local_share_sent_is_charged_when_the_backend_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(10, 10.0), RateLimit(40, 60.0)],
                    on_backend_down="local-share", local_share=2)
        hooked.down = True
        for _ in range(3):
            s.complete(await asyncio.wait_for(s.reserve(), 10.0))
        return await _back_up_then_usage(hooked, s)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        assert _run(main()) == [3, 3]
    assert any("charging it the 3 sends" in r.getMessage() for r in caplog.records)


def test_flush_says_whether_everything_was_applied(tmp_path: Path) -> None:
    async def main() -> tuple[bool, bool, bool]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        before_use = await s.flush(timeout=0.0)
        r = await s.reserve()
        hooked.down = True
        s.complete(r)
        while_down = await s.flush(timeout=1.0)
        hooked.down = False
        after = await s.flush(timeout=10.0)
        await s.close()
        return before_use, while_down, after

    assert _run(main()) == (True, False, True)


def test_repr_says_what_a_scheduler_is_doing(tmp_path: Path) -> None:
    async def main() -> tuple[str, str]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(5, 1.0), RateLimit(50, 60.0)])
        r = await s.reserve()
        up = repr(s)
        hooked.down = True
        s.complete(r)
        await asyncio.sleep(0.5)
        down = repr(s)
        hooked.down = False
        await s.close()
        return up, down

    up, down = _run(main())
    assert "windows=[5/1s, 50/60s]" in up
    assert "backend up, in_flight=1, waiting=0" in up
    assert "backend down, in_flight=0" in down


# --- the local share in detail --------------------------------------------------------------------
def _local_share_scheduler(tmp_path: Path, limits: list[RateLimit], **kwargs: Any
                           ) -> tuple[_Hooked, SharedQuotaScheduler]:
    hooked = _Hooked(_backend(tmp_path))
    hooked.down = True
    s = _shared(tmp_path, backend=hooked, limits=limits, on_backend_down="local-share",
                local_share=2, **kwargs)
    return hooked, s


def test_the_local_share_paces_with_the_margin_and_never_below_one_send(tmp_path: Path) -> None:
    """A 1-per-second window split in two still lets one send a window through (not none, not
    two), spaced by the widened window."""

    async def main() -> list[float]:
        hooked, s = _local_share_scheduler(tmp_path, [RateLimit(1, 1.0)])
        starts = []
        for _ in range(3):
            s.complete(await asyncio.wait_for(s.reserve(), 60.0))
            starts.append(_now())
        hooked.down = False
        await s.close()
        return starts

    starts = _run(main())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(SPAN - 0.01 <= gap <= SPAN + 0.05 for gap in gaps), gaps


def test_the_local_share_keeps_max_wait_counts_and_seqs(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, bool]:
        hooked, s = _local_share_scheduler(tmp_path, [RateLimit(4, 10.0)])
        first = await asyncio.wait_for(s.reserve(), 60.0)
        second = await s.reserve()  # the share: 2 per window
        assert first.seq != second.seq
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=1.0)  # the share is spent for 11 s
        s.complete(second)  # out of order: each completes its own
        in_flight = s.in_flight
        s.complete(first)
        hooked.down = False
        await s.close()
        return s.reservations, in_flight, s.in_flight == 0

    assert _run(main()) == (2, 1, True)


def test_a_rejected_send_on_the_local_share_is_not_charged(tmp_path: Path) -> None:
    async def main() -> list[int]:
        hooked, s = _local_share_scheduler(tmp_path, [RateLimit(10, 10.0)])
        s.complete(await asyncio.wait_for(s.reserve(), 60.0), rejected=True)
        s.complete(await s.reserve())
        s.complete(await s.reserve(), counted=False)  # never left
        return await _back_up_then_usage(hooked, s)

    assert _run(main()) == [1]


def test_a_lease_taken_before_the_switch_to_the_local_share_goes_back(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        hooked = _Hooked(_backend(tmp_path))
        _lose_the_reply_then_go_down(hooked)
        s = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        r = await asyncio.wait_for(s.reserve(), 60.0)  # granted on the local share
        s.complete(r, counted=False)
        hooked.before.clear()
        hooked.down = False
        await s.flush()
        await s.flush()
        result = await _in_flight(hooked.inner)
        await s.close()
        return result

    assert _run(main()) == (0, 0)


@pytest.mark.parametrize(("retry_after", "warned"), [(0.5, False), (300.0, False), (300.5, True)])
def test_the_429_counter_and_the_cap_boundary(tmp_path: Path, retry_after: float, warned: bool,
                                              caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[float, int]:
        s = _shared(tmp_path, rng=random.Random(3), max_retry_after=300.0, retry_after_pad=0.0)
        r = await s.reserve()
        s.complete(r, rejected=True)
        pause = s.on_rate_limited(retry_after, r)
        await s.close()
        return pause, s.rate_limited

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        pause, counted = _run(main())
    jitter = random.Random(3).uniform(0.0, PAUSE_JITTER)
    assert pause == pytest.approx(min(retry_after, 300.0) * (1.0 + jitter))
    assert counted == 1
    assert any("capping the pause" in r.getMessage() for r in caplog.records) == warned


def test_a_send_granted_on_the_share_after_the_backend_returned_is_charged(
        tmp_path: Path) -> None:
    async def main() -> list[int]:
        hooked, s = _local_share_scheduler(tmp_path, [RateLimit(2, 10.0)])  # share: 1 a window
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        head = asyncio.ensure_future(s.reserve())  # waits ~11 s on the share
        await asyncio.sleep(2.0)
        hooked.down = False
        await s.flush()  # back: the share's first send is charged
        s.complete(await asyncio.wait_for(head, 60.0))
        await s.flush()
        used = [n for _, n in await s.usage()]
        await s.close()
        return used

    assert _run(main()) == [2]


def test_close_on_a_new_loop_applies_what_the_old_one_left(tmp_path: Path) -> None:
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)

    async def slow(*_: Any) -> None:
        await asyncio.sleep(1.0)

    async def first() -> None:
        r = await s.reserve()
        hooked.before["complete"] = slow
        s.complete(r)  # on its way when the loop ends
        await asyncio.sleep(0.1)
        hooked.before.clear()

    async def second() -> None:
        await s.close()

    async def look() -> tuple[int, int]:
        backend = _backend(tmp_path)
        backend.bind("ns", s.config)
        return await _in_flight(backend)

    _run(first())
    _run(second())
    assert _run(look()) == (1, 0)


def test_what_a_loop_left_in_the_air_is_settled_on_the_next(tmp_path: Path) -> None:
    """A reservation applied as its loop ended (its reply lost), and a send granted and never
    completed: on the next loop the first lease goes back and the second counts as a send."""
    hooked = _Hooked(_backend(tmp_path))
    s = _shared(tmp_path, backend=hooked)
    left: list[asyncio.Future[Any]] = []

    async def first() -> None:
        await s.reserve()  # granted, never completed: it may have reached the server
        hooked.lose["reserve"] = 1
        left.append(asyncio.ensure_future(s.reserve()))  # applied, reply lost; the loop
        await asyncio.sleep(0.01)  # ends in the backoff

    async def second() -> tuple[int, int]:
        await s.flush()
        result = await _in_flight(hooked.inner)
        await s.close()
        return result

    _run(first())
    assert _run(second()) == (1, 0)


def test_a_quota_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "quota.sqlite").write_bytes(b"this is not a database" * 100)

    async def main() -> None:
        s = _shared(tmp_path)
        with pytest.raises(QuotaConfigError, match=r"quota\.sqlite' cannot be used"):
            await s.reserve()
        await s.close()

    _run(main())


def test_a_lease_granted_again_lasts_lease_ttl_from_then(tmp_path: Path) -> None:
    async def main() -> list[int]:
        backend = _backend(tmp_path)
        s = _shared(tmp_path, backend=backend)  # (binds the backend to the quota)
        await s.usage()
        held = []
        assert (await backend.reserve(60.0, 44))[1] == 44
        await asyncio.sleep(50.0)
        assert (await backend.reserve(60.0, 44))[1] == 44  # a retry after a lost reply
        await asyncio.sleep(50.0)  # 100 s after the first grant, 50 s after the second
        held.append((await backend.usage())[2])
        await asyncio.sleep(11.0)
        held.append((await backend.usage())[2])
        await s.close()
        return held

    assert _run(main()) == [1, 0]
