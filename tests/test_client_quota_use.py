"""The client and its quota: one request is counted in the windows when the server may have
counted it, and its slot given back when it certainly did not (a 429, a request that never
left, one the bulk run's journal stopped before it was sent); the scheduler the client made is
closed with it, one passed in is not. On virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    RawResponse,
    RetryPolicy,
)
from pangocdp_async._bulk import BulkOptions, _sender
from pangocdp_async.testing import InProcessTransport, run_in_virtual_time
from tests.test_bulk_cases import cancel_after

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
