"""SharedQuotaScheduler's feedback paths and waiting in detail, on virtual time: a 429 for a
send that started before the pause on record is stale, a remaining count is read as of the
send's start, the counters add up, the log says what operators need; the backend's retry
schedule, a local-share process noticing that the backend is back, and a waiter's budget
while the backend is slow or every slot is in flight."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import QuotaWaitError, RateLimit, SQLiteQuotaBackend

from .test_quota_front import _Hooked, _in_flight, _wait_after_a_429_on_the_share
from .test_quota_shared import SPAN, _backend, _now, _run, _shared


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == level]


def _bug(*_: Any) -> Any:
    async def hook(*_: Any) -> None:
        raise RuntimeError("a bug")
    return hook


# --- 429s --------------------------------------------------------------------------------------
def test_a_429_for_a_send_started_before_the_pause_is_stale(tmp_path: Path) -> None:
    """Two sends start together; the first's 429 pauses everyone about a second; the second's
    429 (retry-after 30 s) answers a send that started before that pause: it does not make the
    pause 30 s. A 429 with no reservation at all is applied."""

    async def main() -> tuple[float, float, int]:
        a, b = _shared(tmp_path), _shared(tmp_path)
        r1, r2 = await a.reserve(), await a.reserve()
        await asyncio.sleep(0.1)
        a.complete(r1, rejected=True)
        a.on_rate_limited(0.0, r1)
        a.complete(r2, rejected=True)
        a.on_rate_limited(30.0, r2)
        assert await a.flush(timeout=60.0)
        t0 = _now()
        b.complete(await b.reserve())
        stale = _now() - t0
        a.on_rate_limited(5.0)  # no reservation: a pause all the same
        assert await a.flush(timeout=60.0)
        t0 = _now()
        b.complete(await b.reserve())
        fresh = _now() - t0
        await a.close()
        await b.close()
        return stale, fresh, a.rate_limited

    stale, fresh, counted = _run(main())
    assert 1.0 <= stale <= 1.2
    assert 6.0 <= fresh <= 6.7
    assert counted == 3


def test_a_429_while_the_backend_is_down_in_wait_mode_is_kept_for_later(
        tmp_path: Path) -> None:
    async def main() -> float:
        hooked = _Hooked(_backend(tmp_path))
        a = _shared(tmp_path, backend=hooked)
        b = _shared(tmp_path)
        r = await a.reserve()
        hooked.down = True
        a.complete(r, rejected=True)
        await asyncio.sleep(0.5)
        pause = a.on_rate_limited(4.0, r)
        hooked.down = False
        assert await a.flush(timeout=60.0)
        t0 = _now()
        b.complete(await b.reserve())
        waited = _now() - t0
        await a.close()
        await b.close()
        assert pause >= 5.0
        return waited

    assert _run(main()) >= 3.0


def test_a_429_on_the_local_share_pauses_the_share(tmp_path: Path) -> None:
    async def main() -> float:
        hooked = _Hooked(_backend(tmp_path))
        hooked.down = True
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(10, 1.0)],
                    on_backend_down="local-share", local_share=2, retry_after_pad=0.0,
                    rng=random.Random(1))
        return await _wait_after_a_429_on_the_share(hooked, s, 5.0)

    assert 5.0 <= _run(main()) <= 5.6


def test_the_429_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        s = _shared(tmp_path, max_retry_after=300.0, rng=random.Random(2))
        r = await s.reserve()
        s.complete(r, rejected=True)
        s.on_rate_limited(1000.0, r)
        r = await s.reserve()
        s.complete(r, rejected=True)
        s.on_rate_limited(None, r)
        assert await s.flush(timeout=600.0)
        await s.close()

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        _run(main())
    capped, paused, absent = _messages(caplog, logging.WARNING)
    assert capped == "429 says retry after 1e+03 s; capping the pause at max_retry_after=300 s"
    assert paused.startswith("PangoCDP answered 429 (retry-after 1000 s): pausing every "
                             "process sharing the quota for ")
    assert paused.endswith(" s")
    assert absent.startswith("PangoCDP answered 429 (retry-after absent): ")


@pytest.mark.parametrize(("kind", "call"), [
    ("rate_limited", lambda s, r: s.on_rate_limited(1.0, r)),
    ("remaining", lambda s, r: s.on_remaining(3, r)),
    ("complete", lambda s, r: s.complete(r)),
])
def test_feedback_that_fails_with_a_bug_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, call: Any) -> None:
    async def main() -> None:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()
        if kind != "complete":
            s.complete(r)
        assert await s.flush(timeout=60.0)
        hooked.before[kind] = _bug()
        call(s, r)
        assert await s.flush(timeout=60.0)
        await s.close()

    with caplog.at_level(logging.ERROR, logger="pangocdp_async"):
        _run(main())
    [error] = _messages(caplog, logging.ERROR)
    assert error.endswith(f": {kind} failed: a bug")


# --- remaining counts ----------------------------------------------------------------------------
def test_a_remaining_count_is_read_as_of_the_sends_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Five sends at t, one at t+1.0 answered at t+1.5 with 4 left: the server counted the five
    (they were in its window when it counted this one): nothing unseen, nothing charged, and
    nothing logged."""

    async def main() -> int:
        s = _shared(tmp_path, limits=[RateLimit(10, 1.0)])
        for _ in range(5):
            s.complete(await s.reserve())
        await asyncio.sleep(1.0)
        r = await s.reserve()
        await asyncio.sleep(0.5)
        s.complete(r)
        s.on_remaining(4, r)
        assert await s.flush(timeout=60.0)
        await s.close()
        return s.tightened

    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        assert _run(main()) == 0
    assert _messages(caplog, logging.INFO) == []


def test_remaining_counts_add_up_one_unseen_send_at_a_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, list[int]]:
        s = _shared(tmp_path, limits=[RateLimit(10, 1.0)])
        r = await s.reserve()
        s.complete(r)
        s.on_remaining(8, r)  # the model: 9 left; the server: 8
        r = await s.reserve()
        s.complete(r)
        s.on_remaining(6)  # the model: 7 left (one unseen already charged); the server: 6
        assert await s.flush(timeout=60.0)
        used = [n for _, n in await s.usage()]
        await s.close()
        return s.tightened, used

    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        assert _run(main()) == (2, [4])
    infos = _messages(caplog, logging.INFO)
    assert infos == ["server reports 8 requests left: charging 1 unseen sends to the shared "
                     "quota", "server reports 6 requests left: charging 1 unseen sends to the "
                     "shared quota"]


# --- the backend's retry schedule ----------------------------------------------------------------
def test_an_unreachable_backend_is_retried_with_jittered_exponential_backoff(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A completion goes through, then the backend goes away for 12 s: the next one is tried
    again after 50 ms, 100 ms, ... up to 2 s, each wait drawn between half of it and all of
    it."""

    async def main() -> tuple[list[float], int, str]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, rng=random.Random(11))
        r1, r2 = await s.reserve(), await s.reserve()
        tries: list[float] = []
        outage = [True]

        async def note(*_: Any) -> None:
            tries.append(_now())
            hooked.down = outage[0] and len(tries) > 1  # the first completion goes through
        hooked.before["complete"] = note
        s.complete(r1)
        s.complete(r2)
        await asyncio.sleep(12.0)
        outage[0] = False
        assert await s.flush(timeout=60.0)
        await s.close()
        return [b - a for a, b in itertools.pairwise(tries[1:])], s.backend_errors, \
            repr(hooked)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        gaps, errors, backend = _run(main())
    rng = random.Random(11)
    expected = [min(2.0, 0.05 * 2 ** i) * (0.5 + rng.random() / 2) for i in range(len(gaps))]
    assert gaps == pytest.approx(expected, abs=1e-6)
    assert len(gaps) >= 10
    assert errors == len(gaps)
    gone, back = _messages(caplog, logging.WARNING)
    assert gone.startswith(f"quota backend {backend} unreachable (connection refused (test)): "
                           "holding every send until it answers (retrying with backoff)")
    assert back.startswith(f"quota backend {backend} is back after 1")
    assert back.endswith(" s")


def test_a_local_share_process_notices_the_backend_is_back_with_nothing_queued(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[bool, list[int], int, str]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(10, 10.0)],
                    on_backend_down="local-share", local_share=2)
        hooked.down = True
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))  # on the share; nothing queued
        await asyncio.sleep(1.0)
        hooked.down = False
        await asyncio.sleep(5.0)  # no send meanwhile
        back = s.backend_down_since is None
        used = [n for _, n in await s.usage()]
        await s.close()
        return back, used, hooked.calls.count("usage"), repr(hooked)

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        back, used, usage_calls, backend = _run(main())
    assert back
    assert used == [1]
    assert usage_calls <= 3  # a probe or two while down, then the question above
    [gone] = _messages(caplog, logging.ERROR)
    assert gone.startswith(f"quota backend {backend} unreachable (connection refused (test)): "
                           "pacing this process on a local 1/2 share of each window until it "
                           "answers")
    [returned] = _messages(caplog, logging.WARNING)
    assert returned.startswith(f"quota backend {backend} is back after ")
    assert returned.endswith("; charging it the 1 sends made on the local share")


def test_a_local_share_process_does_not_probe_while_something_is_queued(
        tmp_path: Path) -> None:
    async def main() -> int:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        r = await s.reserve()
        hooked.down = True
        s.complete(r)  # queued, and failing
        await asyncio.sleep(5.0)
        hooked.down = False
        assert await s.flush(timeout=60.0)
        await s.close()
        return hooked.calls.count("usage")

    assert _run(main()) == 0


def test_close_during_an_outage_names_the_lease_a_local_share_process_owes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reservation that failed may have been applied: switching to the local share, the
    process owes the backend its release, and close() says that is still pending."""

    async def main() -> None:
        hooked = _Hooked(_backend(tmp_path))
        hooked.down = True
        s = _shared(tmp_path, backend=hooked, on_backend_down="local-share", local_share=2)
        s.complete(await asyncio.wait_for(s.reserve(), 60.0))
        await asyncio.sleep(1.0)
        await s.close()
        hooked.down = False

    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        _run(main())
    [closing] = [m for m in _messages(caplog, logging.WARNING) if "at close" in m]
    assert ": 1 operations (release) not applied at close" in closing


# --- waiting -------------------------------------------------------------------------------------
def test_max_wait_holds_while_the_backend_is_slow_to_answer(tmp_path: Path) -> None:
    """The backend takes 2 s to answer: a waiter with max_wait=0.5 gives up at 0.5 s, and the
    lease the backend grants after it left goes back."""

    async def main() -> tuple[float, tuple[int, int], int]:
        hooked = _Hooked(_backend(tmp_path))

        async def slow(*_: Any) -> None:
            await asyncio.sleep(2.0)
        hooked.before["reserve"] = slow
        s = _shared(tmp_path, backend=hooked)
        t0 = _now()
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=0.5)
        gave_up = _now() - t0
        hooked.before.clear()
        assert await s.flush(timeout=60.0)
        held = await _in_flight(hooked.inner)
        await s.close()
        return gave_up, held, hooked.calls.count("complete")

    gave_up, held, releases = _run(main())
    assert gave_up == pytest.approx(0.5, abs=1e-3)
    assert held == (0, 0)
    assert releases == 1


def test_a_waiter_that_left_before_its_turn_at_the_backend_costs_no_call(
        tmp_path: Path) -> None:
    async def main() -> list[str]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked)
        r = await s.reserve()

        async def slow(*_: Any) -> None:
            await asyncio.sleep(1.0)
        hooked.before["complete"] = slow
        s.complete(r)  # ahead of the next reservation, and slow
        with pytest.raises(QuotaWaitError):
            await s.reserve(max_wait=0.5)
        assert await s.flush(timeout=60.0)
        await s.close()
        return hooked.calls

    assert _run(main()) == ["reserve", "complete", "close"]


def _slot_held_elsewhere(tmp_path: Path, hold: float) -> Any:
    """Another process takes the only slot and answers after ``hold`` seconds."""

    async def other() -> None:
        o = _shared(tmp_path, backend=SQLiteQuotaBackend(tmp_path / "quota.sqlite", clock=_now,
                                                         threaded=False),
                    limits=[RateLimit(1, 1.0)])
        r = await o.reserve()
        await asyncio.sleep(hold)
        o.complete(r)
        await o.close()
    return other


def test_a_slot_held_in_flight_by_another_process_is_polled_for(tmp_path: Path) -> None:
    async def main() -> tuple[float, float]:
        other = asyncio.ensure_future(_slot_held_elsewhere(tmp_path, 0.5)())
        await asyncio.sleep(0)
        s = _shared(tmp_path, limits=[RateLimit(1, 1.0)])
        t0 = _now()
        with pytest.raises(QuotaWaitError) as err:
            await s.reserve(max_wait=0.005)  # less than a poll
        gave_up = _now() - t0
        assert err.value.retry_after == pytest.approx(0.01)
        r = await asyncio.wait_for(s.reserve(max_wait=5.0), 10.0)
        granted = _now() - t0
        s.complete(r)
        await other
        await s.close()
        return gave_up, granted

    gave_up, granted = _run(main())
    assert gave_up == pytest.approx(0.005, abs=1e-4)
    assert 0.5 + SPAN - 0.01 <= granted <= 0.5 + SPAN + 0.05


def test_a_second_waiter_waits_its_turn_instead_of_asking_the_backend(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        hooked = _Hooked(_backend(tmp_path))
        s = _shared(tmp_path, backend=hooked, limits=[RateLimit(1, 1.0)])
        s.complete(await s.reserve())
        order: list[int] = []

        async def one(i: int) -> None:
            r = await s.reserve()
            order.append(i)
            s.complete(r)
        await asyncio.gather(one(1), one(2))
        await s.close()
        return order, hooked.calls.count("reserve")

    assert _run(main()) == ([1, 2], 5)
