"""The client and its quota: one request is counted in the windows when the server may have
counted it, and its slot given back when it certainly did not (a 429, a request that never
left, one the bulk run's journal stopped before it was sent); the scheduler the client made is
closed with it, one passed in is not. On virtual time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from pangocdp_async import (
    APIConnectionError,
    APIStatusError,
    IngestReport,
    PangoCDPClient,
    PipelineError,
    QuotaScheduler,
    RateLimit,
    RateLimitedError,
    RawResponse,
    RetryPolicy,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
)
from pangocdp_async._bulk import BulkOptions, _sender
from pangocdp_async._constants import HEADER_RATE_LIMIT_REMAINING
from pangocdp_async.testing import InProcessTransport, run_in_virtual_time
from tests.test_bulk_cases import cancel_after
from tests.test_quota_front import _Hooked
from tests.test_quota_shared import _backend, _run, _shared

SHORT, LONG = RateLimit(10, 1.0), RateLimit(100, 60.0)
ONCE = RetryPolicy(max_attempts=1)


def answer(status: int, **body: Any) -> Callable[[int, bytes], RawResponse]:
    return lambda n, sent: RawResponse(status, CIMultiDict(), orjson.dumps(body))


def fail(exc: BaseException) -> Callable[[int, bytes], BaseException]:
    return lambda n, sent: exc


def used_after_one_request(respond: Callable[[int, bytes], RawResponse | BaseException]
                           ) -> tuple[int, type[BaseException] | None]:
    """Sends one request answered by ``respond``: the sends the hour-long window then counts
    (a 429 fills the short one), and the type of error the caller got (None if accepted)."""
    async def main() -> tuple[int, type[BaseException] | None]:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=[SHORT, LONG],
                                  retry=ONCE, transport=InProcessTransport(respond)) as client:
            raised: type[BaseException] | None = None
            try:
                await client.ingest("order", [{"id": 1}], source="POS")
            except Exception as exc:
                raised = type(exc)
            [_, (limit, used)] = client.limiter.window_usage()
            assert limit == LONG
            return used, raised
    return run_in_virtual_time(main())


@pytest.mark.parametrize(("respond", "used", "raised"), [
    pytest.param(answer(200, success=True), 1, None, id="accepted"),
    pytest.param(answer(503, message="busy"), 1, APIStatusError,
                 id="503: the server may have counted it"),
    pytest.param(answer(400, message="bad"), 1, APIStatusError, id="400: counted"),
    pytest.param(answer(429, message="slow down"), 0, APIStatusError, id="429: given back"),
    pytest.param(fail(APIConnectionError("refused", maybe_sent=False)), 0, APIConnectionError,
                 id="never left: given back"),
    pytest.param(fail(APIConnectionError("reset", maybe_sent=True)), 1, APIConnectionError,
                 id="lost after sending: counted"),
    pytest.param(fail(TimeoutError()), 1, TimeoutError,
                 id="a transport's own error: counted"),
])
def test_a_request_is_counted_unless_the_server_certainly_did_not_count_it(
        respond: Callable[[int, bytes], RawResponse | BaseException], used: int,
        raised: type[BaseException] | None) -> None:
    counted, error = used_after_one_request(respond)
    assert counted == used
    if raised is None:
        assert error is None
    else:
        assert error is not None
        assert issubclass(error, raised)


class RefusingJournal:
    """A journal that cannot write: every dispatch raises."""

    def dispatched(self, batch: Any, sender: int) -> None:
        raise OSError("disk full")

    def accepted(self, positions: list[int]) -> None:
        pass

    def failed(self, failures: list[Any]) -> None:
        pass

    def finished(self, batch: Any) -> None:
        pass


def test_a_send_the_journal_stopped_gives_its_slot_back() -> None:
    """The journal cannot note the batch before its request: nothing is sent, the run stops
    with the records unsent, and the slot reserved for it is not counted."""
    transport = InProcessTransport()

    async def main() -> tuple[IngestReport, int]:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=[SHORT, LONG],
                                  retry=ONCE, transport=transport) as client:
            run = client._bulk_run("order", "POS", None, None, None,
                                   BulkOptions(retry=ONCE, concurrency=1),
                                   journal=RefusingJournal())
            with pytest.raises(PipelineError) as info:
                await run.run([{"id": i} for i in range(3)])
            [_, (_, used)] = client.limiter.window_usage()
            return info.value.report, used
    report, used = run_in_virtual_time(main())
    assert transport.requests == 0
    assert used == 0
    assert report.records_unsent == 3
    assert report.records_in_doubt == 0


@pytest.mark.parametrize(("maybe_sent", "in_doubt"), [(False, 0), (True, 3)])
def test_a_batch_whose_requests_never_left_is_not_in_doubt(maybe_sent: bool,
                                                           in_doubt: int) -> None:
    """Every attempt fails on the connection: when it certainly never left, the batch ends
    failed and not in doubt (nothing can have arrived); when it may have, in doubt."""
    transport = InProcessTransport(fail(APIConnectionError("no", maybe_sent=maybe_sent)))

    async def main() -> IngestReport:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=(),
                                  retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01),
                                  transport=transport) as client:
            return await client.ingest_many("order", [{"id": i} for i in range(3)],
                                            source="POS", concurrency=1)
    report = run_in_virtual_time(main())
    assert transport.requests == 2
    assert report.records_in_doubt == in_doubt
    assert report.records_failed == 3 - in_doubt


@pytest.mark.parametrize(("maybe_sent", "in_doubt"), [(False, 0), (True, 3)])
def test_a_run_cancelled_in_backoff_after_a_failed_connection(
        maybe_sent: bool, in_doubt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while waiting to retry a batch whose request failed on the connection: the
    batch is unsent if that request certainly never left, else in doubt."""
    # The backoff is drawn at random from [0, 10 s): here it is the whole 10 s.
    monkeypatch.setattr(_sender, "backoff_delay", lambda retry, policy, rng: 10.0)
    transport = InProcessTransport(fail(APIConnectionError("no", maybe_sent=maybe_sent)))

    async def main() -> IngestReport:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=(),
                                  retry=RetryPolicy(max_attempts=5, backoff_initial_s=10.0),
                                  transport=transport) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(3)], source="POS", concurrency=1))
            return await cancel_after(client, task, 1.0)
    report = run_in_virtual_time(main())
    assert transport.requests == 1
    assert report.records_in_doubt == in_doubt
    assert report.records_unsent == 3 - in_doubt


@pytest.mark.parametrize("spec", [None, "sqlite"])
async def test_closing_the_client_closes_the_scheduler_it_made(spec: str | None,
                                                               tmp_path: Path) -> None:
    """A scheduler the client made (from rate_limits=, or from a quota spec) is the client's:
    closing the client closes it, so a send still waiting for a slot is cancelled then, not
    served 10 s later by a closed client. (On the real loop: the SQLite backend answers from
    a thread.)"""
    limiter = None if spec is None else f"sqlite:{tmp_path / 'quota.sqlite'}"
    client = PangoCDPClient(api_key="k", token="t", rate_limits=[RateLimit(1, 10.0)],
                            limiter=limiter, transport=InProcessTransport(), retry=ONCE)
    async with client:
        await client.ingest("order", [{"id": 1}], source="POS")
        waiting = asyncio.ensure_future(client.ingest("order", [{"id": 2}], source="POS"))
        await asyncio.sleep(0)  # it asks for a slot
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 2.0)  # (a TimeoutError if it kept waiting)


def test_a_scheduler_passed_in_outlives_the_client() -> None:
    """A scheduler passed in is the caller's: one client closing leaves it serving another
    client's send that waits for a slot."""
    async def main() -> float:
        loop = asyncio.get_running_loop()
        scheduler = QuotaScheduler([RateLimit(1, 10.0)])
        first = PangoCDPClient(api_key="k", token="t", limiter=scheduler,
                               transport=InProcessTransport(), retry=ONCE)
        async with PangoCDPClient(api_key="k", token="t", limiter=scheduler,
                                  transport=InProcessTransport(), retry=ONCE) as second:
            async with first:
                await first.ingest("order", [{"id": 1}], source="POS")
                waiting = asyncio.ensure_future(
                    second.ingest("order", [{"id": 2}], source="POS"))
                await asyncio.sleep(1.0)
            await waiting
            return loop.time()
    assert run_in_virtual_time(main()) == pytest.approx(10.0, abs=0.5)


@pytest.mark.parametrize(("timeout", "refused"), [
    (29.9, None),
    (30.0, "the request timeout (30 s)"),
    (aiohttp.ClientTimeout(total=None), "the request timeout (none is set)"),
])
def test_a_shared_quotas_leases_must_outlast_the_request_timeout(
        timeout: float | aiohttp.ClientTimeout, refused: str | None, tmp_path: Path) -> None:
    """A lease ends the send it holds: one no longer than the request timeout could end while
    the request is still under way, so the client refuses it, saying why."""
    limiter = SharedQuotaScheduler(SQLiteQuotaBackend(tmp_path / "q.sqlite"), [SHORT],
                                   lease_ttl=30.0)

    def build() -> PangoCDPClient:
        return PangoCDPClient(api_key="k", token="t", limiter=limiter, timeout=timeout)
    if refused is None:
        build()
        return
    message = (f"the shared quota's lease_ttl (30 s) must be longer than {refused}: a send "
               "still unanswered when its lease ends is counted as answered then")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build()


def test_closing_waits_at_most_2_s_for_a_shared_quota_that_is_down(tmp_path: Path) -> None:
    """A shared scheduler passed in stays open, but closing the client first waits for its
    completions to reach the backend (so its slots are not held until the leases end): for
    2 s at most when the backend is down."""
    async def main() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        backend = _Hooked(_backend(tmp_path))
        limiter = _shared(tmp_path, backend=backend, lease_ttl=90.0, limits=[SHORT])
        async with PangoCDPClient(api_key="k", token="t", limiter=limiter, retry=ONCE,
                                  transport=InProcessTransport()) as client:
            await client.ingest("order", [{"id": 1}], source="POS")
            backend.down = True  # the completion cannot be applied
            closing = loop.time()
        took = loop.time() - closing
        backend.down = False
        applied = await limiter.flush(timeout=60.0)
        await limiter.close()
        return took, applied
    took, applied = _run(main())
    assert took == pytest.approx(2.0, abs=0.05)
    assert applied  # (and the scheduler was still usable after the client closed)


class SlowTail:
    """Answers 200 at once, but the request numbered ``slow`` after ``latency`` s, with the
    remaining count in ``remaining`` (request number -> header value)."""

    def __init__(self, slow: int, latency: float, remaining: dict[int, int]) -> None:
        self.slow, self.latency, self.remaining = slow, latency, remaining
        self.sent_at: list[float] = []

    async def post(self, url: Any, *, body: bytes, headers: Any,
                   params: Any = None) -> RawResponse:
        loop = asyncio.get_running_loop()
        self.sent_at.append(loop.time())
        n = len(self.sent_at)
        if n == self.slow:
            await asyncio.sleep(self.latency)
        found = self.remaining.get(n)
        extra = {} if found is None else {HEADER_RATE_LIMIT_REMAINING: str(found)}
        return RawResponse(200, CIMultiDict(extra), orjson.dumps({"success": True}))


def test_the_servers_remaining_count_is_read_against_the_requests_round_trip() -> None:
    """5 per second: four sends at 0.8 s, then one at 1.0 s that takes 1 s. The server counted
    it with the four (0 left) when it arrived; they have left our window by its answer, but they
    were sent within its round trip, so the server's 0 is no news: nothing is charged, and the
    next send goes at once (charging the 4 would hold it to 3.0 s)."""
    transport = SlowTail(slow=5, latency=1.0, remaining={5: 0})

    async def main() -> None:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=[RateLimit(5, 1.0)],
                                  retry=ONCE, transport=transport) as client:
            await asyncio.sleep(0.8)
            for i in range(4):
                await client.ingest("order", [{"id": i}], source="POS")
            await asyncio.sleep(0.2)
            await client.ingest("order", [{"id": 4}], source="POS")
            await client.ingest("order", [{"id": 5}], source="POS")
    run_in_virtual_time(main())
    assert transport.sent_at == pytest.approx([0.8] * 4 + [1.0, 2.0])


def test_a_429_for_a_request_sent_before_the_pause_does_not_extend_it() -> None:
    """Two requests leave together and both get 429, at 0.1 s and 0.5 s: the second belongs to
    the pause the first began (about 1 s, from 0.1 s), so a send asked for at 0.6 s leaves when
    that pause ends, not 1 s after the second 429."""
    sent_at: list[float] = []

    class TwoRefused:
        async def post(self, url: Any, *, body: bytes, headers: Any,
                       params: Any = None) -> RawResponse:
            loop = asyncio.get_running_loop()
            sent_at.append(loop.time())
            if len(sent_at) <= 2:
                await asyncio.sleep(0.1 if len(sent_at) == 1 else 0.5)
                return RawResponse(429, CIMultiDict(), orjson.dumps({"message": "slow down"}))
            return RawResponse(200, CIMultiDict(), orjson.dumps({"success": True}))

    async def main() -> list[type[BaseException] | None]:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=[RateLimit(10, 1.0)],
                                  retry=ONCE, transport=TwoRefused()) as client:
            async def send(i: int) -> type[BaseException] | None:
                try:
                    await client.ingest("order", [{"id": i}], source="POS")
                except Exception as exc:
                    return type(exc)
                return None
            first = [asyncio.ensure_future(send(i)) for i in range(2)]
            await asyncio.sleep(0.6)
            return [*(await asyncio.gather(*first)), await send(2)]
    outcomes = run_in_virtual_time(main())
    assert outcomes == [RateLimitedError, RateLimitedError, None]
    assert sent_at[:2] == pytest.approx([0.0, 0.0])
    assert 1.1 <= sent_at[2] <= 1.1 + 0.1 + 1e-9  # 0.1 s + (0 + 1 s) stretched by up to 10%
