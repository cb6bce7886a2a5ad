"""SharedQuotaScheduler on virtual time: several schedulers (standing in for processes) on one
SQLite quota, the 429 pause and the remaining-count shared between them, the FIFO, max_wait
and cancellation, a backend that goes away (wait, or a local share), and what the client and
the specs promise about it."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pangocdp_async import (
    PangoCDPClient,
    QuotaBackendError,
    QuotaConfigError,
    QuotaScheduler,
    QuotaWaitError,
    RateLimit,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
    limiter_from_spec,
)
from pangocdp_async._limiter._backend import namespace_for
from pangocdp_async.testing import FakePangoCDP, run_in_virtual_time

T = TypeVar("T")
LIMITS = [RateLimit(5, 1.0)]
SPAN = 1.1001  # 1 s widened by the default margin


def _now() -> float:
    return asyncio.get_running_loop().time()


def _backend(path: Path, **kwargs: Any) -> SQLiteQuotaBackend:
    return SQLiteQuotaBackend(path / "quota.sqlite", clock=_now, threaded=False, **kwargs)


def _shared(path: Path, namespace: str = "ns", **kwargs: Any) -> SharedQuotaScheduler:
    backend = kwargs.pop("backend", None) or _backend(path)
    return SharedQuotaScheduler(backend, kwargs.pop("limits", LIMITS), namespace=namespace,
                                **kwargs)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return run_in_virtual_time(coro, start=1_000.0)


def _most_in_any_window(starts: list[float], span: float) -> int:
    starts = sorted(starts)
    return max((sum(1 for t in starts if s <= t < s + span) for s in starts), default=0)


async def _send_many(scheduler: SharedQuotaScheduler, n: int, starts: list[float],
                     latency: float = 0.02) -> None:
    async def one() -> None:
        r = await scheduler.reserve()
        starts.append(_now())
        await asyncio.sleep(latency)
        scheduler.complete(r)
    await asyncio.gather(*(one() for _ in range(n)))


def test_two_schedulers_on_one_file_pace_as_one(tmp_path: Path) -> None:
    """Two schedulers (two processes' worth) on one quota never put more than 5 sends in any
    window of 1 s, and together send about 5 per window span; given two namespaces (two
    quotas) the same senders go twice as fast, so the check can fail."""

    async def main(shared: bool) -> list[float]:
        path = tmp_path / str(shared)
        path.mkdir()
        a = _shared(path, "one")
        b = _shared(path, "one" if shared else "two")
        starts: list[float] = []
        await asyncio.gather(_send_many(a, 15, starts), _send_many(b, 15, starts))
        await a.close()
        await b.close()
        return starts

    starts = _run(main(shared=True))
    assert _most_in_any_window(starts, 1.0) == 5
    assert 5 * SPAN <= max(starts) - min(starts) <= 5 * SPAN + 0.5  # 30 sends: 6 windows
    apart = _run(main(shared=False))
    assert _most_in_any_window(apart, 1.0) == 10


def test_a_429_seen_by_one_pauses_the_other(tmp_path: Path) -> None:
    async def main() -> float:
        a, b = _shared(tmp_path), _shared(tmp_path)
        r = await a.reserve()
        a.complete(r, rejected=True)
        a.on_rate_limited(2.0, r)  # pause: 2 s + 1 s pad, stretched by up to 10%
        await a.flush()
        t0 = _now()
        r2 = await b.reserve()
        waited = _now() - t0
        b.complete(r2)
        await a.close()
        await b.close()
        return waited

    assert 3.0 <= _run(main()) <= 3.3 + 0.05


def test_a_deficit_reported_to_one_holds_back_the_other(tmp_path: Path) -> None:
    async def main() -> tuple[int, float]:
        a, b = _shared(tmp_path), _shared(tmp_path)
        r = await a.reserve()
        a.complete(r)
        a.on_remaining(0, r)  # the server says the window is spent: 4 sends unseen
        await a.flush()
        t0 = _now()
        r2 = await b.reserve()
        b.complete(r2)
        await a.close()
        await b.close()
        return a.tightened, _now() - t0

    tightened, waited = _run(main())
    assert tightened == 4
    assert waited >= SPAN - 0.05


def test_waiters_of_one_process_are_served_in_order(tmp_path: Path) -> None:
    async def main() -> list[int]:
        s = _shared(tmp_path)
        order: list[int] = []

        async def one(i: int) -> None:
            r = await s.reserve()
            order.append(i)
            s.complete(r)

        tasks = []
        for i in range(12):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await s.close()
        return order

    assert _run(main()) == list(range(12))


def test_max_wait_refuses_a_slot_too_far_away(tmp_path: Path) -> None:
    async def main() -> None:
        s = _shared(tmp_path)
        for _ in range(5):
            s.complete(await s.reserve())
        with pytest.raises(QuotaWaitError) as err:
            await s.reserve(max_wait=0.5)
        retry_after = err.value.retry_after
        assert retry_after is not None
        assert 0.5 < retry_after <= SPAN + 2e-6
        assert s.waiting == 0
        r = await s.reserve(max_wait=2.0)  # within reach: waits, then goes
        s.complete(r)
        await s.close()

    _run(main())


def test_a_cancelled_waiter_takes_nothing(tmp_path: Path) -> None:
    """Cancelled while its request to the backend is on its way: the lease the backend grants
    anyway is given back, so the quota shows nothing in flight."""

    async def main() -> tuple[int, int]:
        s = _shared(tmp_path)
        task = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(0)  # the reserve operation is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.flush()
        _, used, in_flight, _ = await s.backend.usage()
        await s.close()
        return used[0], in_flight

    assert _run(main()) == (0, 0)


class _Flaky:
    """A backend that is down while ``down`` says so (every operation raises)."""

    def __init__(self, inner: SQLiteQuotaBackend, down: Callable[[], bool]) -> None:
        self.inner = inner
        self.down = down
        self.name = "flaky"
        self.calls = 0

    def bind(self, namespace: str, config: Any) -> None:
        self.inner.bind(namespace, config)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any) -> Any:
            self.calls += 1
            if self.down():
                raise QuotaBackendError("connection refused")
            return await method(*args)
        return call


def test_a_backend_that_is_down_holds_every_send_until_it_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> dict[str, Any]:
        back_at = _now() + 5.0
        flaky = _Flaky(_backend(tmp_path), lambda: _now() < back_at)
        s = _shared(tmp_path, backend=flaky)
        out: dict[str, Any] = {}
        task = asyncio.ensure_future(s.reserve())
        await asyncio.sleep(1.0)
        out["granted_while_down"] = task.done()
        out["down"] = s.backend_down_since is not None
        out["errors"] = s.backend_errors
        r = await task
        out["granted_at"] = _now() - (back_at - 5.0)
        out["down_after"] = s.backend_down_since is not None
        s.complete(r)
        await s.close()
        return out

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        out = _run(main())
    assert out["granted_while_down"] is False
    assert out["down"] is True
    assert out["errors"] >= 3  # retried with backoff
    assert 5.0 <= out["granted_at"] <= 5.0 + 2.1  # at most one backoff step after its return
    assert out["down_after"] is False
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "holding every send" in messages
    assert "(connection refused)" in messages  # what went wrong
    assert re.search(r"is back after [5-7]\.\d s", messages)  # and after how long


def test_completions_made_while_down_reach_the_backend_after(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        state = {"down": False}
        flaky = _Flaky(_backend(tmp_path), lambda: state["down"])
        s = _shared(tmp_path, backend=flaky)
        r = await s.reserve()
        state["down"] = True
        s.complete(r)
        await asyncio.sleep(3.0)
        state["down"] = False
        await s.flush()
        _, used, in_flight, _ = await flaky.inner.usage()
        await s.close()
        return used[0], in_flight

    assert _run(main()) == (1, 0)  # the send is on record, its lease gone


def test_a_local_share_paces_while_the_backend_is_down_and_is_charged_after(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[list[float], float, int]:
        state = {"down": True}
        flaky = _Flaky(_backend(tmp_path), lambda: state["down"])
        s = _shared(tmp_path, backend=flaky, limits=[RateLimit(10, 10.0)],
                    on_backend_down="local-share", local_share=2)
        starts: list[float] = []
        await _send_many(s, 5, starts)  # the local share: 5 per window
        assert s._fallback is not None
        next_free = s._fallback.next_free()
        state["down"] = False
        await s.flush()
        await s.flush()  # (the charge is queued when it comes back)
        _, used, _, _ = await flaky.inner.usage()
        await s.close()
        return starts, next_free, used[0]

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        starts, next_free, charged = _run(main())
    assert max(starts) - min(starts) < 1.0  # the share's five went at once
    assert next_free > 9.0  # and its window was spent
    assert charged == 5  # what the share sent is on the quota's record once it is back
    assert any("local 1/2 share" in r.getMessage() for r in caplog.records)


def test_processes_that_disagree_on_the_windows_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        a = _shared(tmp_path)
        a.complete(await a.reserve())
        b = _shared(tmp_path, limits=[RateLimit(6, 1.0)])
        with pytest.raises(QuotaConfigError, match="must use the same windows"):
            await b.reserve()
        await a.close()
        await b.close()

    _run(main())


def test_a_lease_never_completed_counts_as_a_send_when_it_ends(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, int, int]:
        s = _shared(tmp_path, lease_ttl=2.0)
        await s.reserve()  # its process "dies": never completed
        _, used_before, in_flight_before, _ = await s.backend.usage()
        await asyncio.sleep(2.5)
        _, used_after, in_flight_after, _ = await s.backend.usage()
        await s.close()
        return used_before[0], in_flight_before, used_after[0], in_flight_after

    assert _run(main()) == (1, 1, 1, 0)  # in flight, then on record at the lease's end


def test_a_lost_record_is_taken_as_full_windows(tmp_path: Path) -> None:
    """The quota's rows vanish while a process uses it (a Redis restarted empty, a file
    replaced): the windows may be spent for all anyone knows, so they are modeled full."""

    async def main() -> list[int]:
        s = _shared(tmp_path)
        s.complete(await s.reserve())
        await s.flush()
        db = sqlite3.connect(tmp_path / "quota.sqlite")
        for table in ("meta", "window", "sends", "leases"):
            db.execute(f"DELETE FROM pangocdp_quota_{table}")  # noqa: S608 -- fixed names
        db.commit()
        db.close()
        used = [n for _, n in await s.usage()]
        await s.close()
        return used

    assert _run(main()) == [5]


def test_the_quota_is_named_after_a_hash_of_the_api_key(tmp_path: Path) -> None:
    s = SharedQuotaScheduler(_backend(tmp_path), LIMITS)
    s.bind_credential("secret-key-1")
    assert s.namespace == namespace_for("secret-key-1")
    assert "secret-key-1" not in (s.namespace or "")
    s.bind_credential("secret-key-1")  # the same key again: fine
    with pytest.raises(ValueError, match="another API key"):
        s.bind_credential("secret-key-2")
    assert "secret-key" not in repr(s)


async def test_the_client_hands_its_completions_to_the_backend_before_it_closes(
        tmp_path: Path) -> None:
    """A client that does not own the shared limiter still flushes it on close: the process
    may end right after, and a completion left in the queue would hold a slot until the
    lease ends."""
    async with FakePangoCDP(rate_limits=None) as fake:
        limiter = SharedQuotaScheduler(SQLiteQuotaBackend(tmp_path / "q.sqlite"), LIMITS)
        async with PangoCDPClient(**fake.client_kwargs(), limiter=limiter) as client:
            await client.ingest("order", [{"orderId": "1"}], source="POS")
            assert client.stats.quota_backend == "sqlite"
            assert client.stats.quota_backend_down is False
        assert not limiter._ops  # applied before the client's close returned
        _, _, in_flight, _ = await limiter.backend.usage()
        assert in_flight == 0
        await limiter.close()


async def test_a_spec_makes_a_scheduler_the_client_owns(tmp_path: Path) -> None:
    async with FakePangoCDP(rate_limits=None) as fake:
        spec = f"sqlite:{tmp_path / 'q.sqlite'}"
        client = PangoCDPClient(**fake.client_kwargs(), limiter=spec, rate_limits=LIMITS)
        assert isinstance(client.limiter, SharedQuotaScheduler)
        assert client.limiter.limits == tuple(LIMITS)
        async with client:
            await client.ingest("order", [{"orderId": "1"}], source="POS")
    assert (tmp_path / "q.sqlite").exists()


def test_specs() -> None:
    assert isinstance(limiter_from_spec("local"), QuotaScheduler)
    shared = limiter_from_spec("sqlite:/tmp/x.sqlite", LIMITS, lease_ttl=90.0)
    assert isinstance(shared, SharedQuotaScheduler)
    assert shared.lease_ttl == 90.0
    with pytest.raises(ValueError, match="unknown quota") as err:
        limiter_from_spec("memcached://user:hunter2@host")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="needs a file"):
        limiter_from_spec("sqlite:")


def test_the_lease_must_outlive_the_request_timeout(tmp_path: Path) -> None:
    limiter = SharedQuotaScheduler(_backend(tmp_path), LIMITS, lease_ttl=20.0)
    with pytest.raises(ValueError, match="lease_ttl"):
        PangoCDPClient(api_key="k", token="t", limiter=limiter, timeout=30.0)


def test_a_backend_bound_to_another_quota_forgets_the_first_ones_record(tmp_path: Path) -> None:
    """The record it remembers (to notice a lost quota) is of the first quota: moving to a
    second one that exists must not be taken for a loss (which would model it full)."""
    from pangocdp_async import Margin
    from pangocdp_async._limiter._backend import QuotaConfig

    async def main() -> list[int]:
        config = QuotaConfig.build(tuple(LIMITS), "sliding", Margin())
        other = _backend(tmp_path)
        other.bind("b", config)
        await other.usage()  # quota "b" exists, with its own record
        backend = _backend(tmp_path)
        backend.bind("a", config)
        await backend.usage()
        backend.bind("b", config)
        _, used, _, _ = await backend.usage()
        await backend.close()
        await other.close()
        return used

    assert _run(main()) == [0]


def test_client_stats_say_when_the_shared_backend_is_down(tmp_path: Path) -> None:
    limiter = SharedQuotaScheduler(_backend(tmp_path), LIMITS)
    client = PangoCDPClient(api_key="k", token="t", limiter=limiter)
    limiter.backend_errors = 3
    limiter.backend_down_since = 12.0
    stats = client.stats
    assert (stats.quota_backend, stats.quota_backend_errors, stats.quota_backend_down) == (
        "sqlite", 3, True)
