"""Bulk runs, case by case: the outcomes that are a choice (in doubt or failed), linger, the
stream's and the client's lifecycle, arguments refused; on virtual time, no sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from pangocdp_async import (
    APIConnectionError,
    IngestReport,
    PangoCDPClient,
    PipelineError,
    RawResponse,
    RequestValidationError,
    RetryPolicy,
)
from pangocdp_async.testing import FakePangoCDP, InProcessTransport, run_in_virtual_time

FAST = RetryPolicy(backoff_initial_s=0.01, max_attempts=3)


def client_for(transport: InProcessTransport, **kwargs: Any) -> PangoCDPClient:
    return PangoCDPClient(api_key="k", token="t", transport=transport, rate_limits=(),
                          retry=FAST, **kwargs)


def run_many(transport: InProcessTransport, n: int, **kwargs: Any) -> IngestReport:
    async def main() -> IngestReport:
        async with client_for(transport) as client:
            return await client.ingest_many("order", ({"id": i} for i in range(n)),
                                            source="POS", **kwargs)
    return run_in_virtual_time(main())


def test_lost_answers_make_records_in_doubt_not_failed() -> None:
    """Every attempt's connection breaks after sending: the server may hold the batch, so its
    records are in doubt (with the error), not failed; nothing goes to the dead letter."""
    dead: list[Any] = []
    transport = InProcessTransport(lambda n, b: APIConnectionError("reset", maybe_sent=True))
    report = run_many(transport, 50, dead_letter=dead.append)
    assert report.records_in_doubt == 50
    assert report.records_failed == 0
    assert all(isinstance(d.error, APIConnectionError) for d in report.in_doubt)
    assert dead == []
    assert transport.requests == 3


def test_requests_that_never_left_make_records_failed() -> None:
    """Every attempt fails before sending: the server cannot hold them; they failed."""
    transport = InProcessTransport(lambda n, b: APIConnectionError("refused", maybe_sent=False))
    report = run_many(transport, 50)
    assert report.records_failed == 50
    assert report.records_in_doubt == 0


def test_a_200_saying_it_failed_is_not_counted_accepted_in_stats() -> None:
    """client.stats does not count a 200 whose body says "success": false as accepted."""
    transport = InProcessTransport(lambda n, b: RawResponse(
        200, CIMultiDict(), orjson.dumps({"success": False, "errorCode": "X", "message": "no"})))

    async def main() -> int:
        async with client_for(transport) as client:
            await client.ingest_many("order", [{"id": 1}], source="POS")
            return client.stats.records_accepted
    assert run_in_virtual_time(main()) == 0


def test_linger_sends_a_lone_record_after_linger() -> None:
    """A stream with linger=2: one record leaves 2 s after it was sent, with no flush."""
    transport = InProcessTransport()

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        sent_at: list[float] = []
        original = transport.respond

        def respond(n: int, body: bytes) -> RawResponse | BaseException:
            sent_at.append(loop.time())
            return original(n, body)
        transport.respond = respond
        async with client_for(transport) as client:
            async with client.stream("order", source="POS", linger=2.0) as stream:
                await stream.send({"id": 1})
                await asyncio.sleep(1.9)
                assert sent_at == []
                await asyncio.sleep(0.2)
                assert len(sent_at) == 1
        return sent_at
    assert run_in_virtual_time(main())[0] == pytest.approx(2.0, abs=0.01)


def test_an_entry_larger_than_max_batch_bytes_is_failed_alone() -> None:
    """One entry alone over max_batch_bytes is failed with its size; the others are sent."""
    transport = InProcessTransport()

    async def main() -> IngestReport:
        records = [{"id": 0}, {"id": 1, "blob": "x" * 5_000}, {"id": 2}]
        async with client_for(transport) as client:
            return await client.ingest_many("order", records, source="POS",
                                            max_batch_bytes=1_000)
    report = run_in_virtual_time(main())
    assert [f.position for f in report.failures] == [1]
    assert "5,0" in str(report.failures[0].error)  # its size, in bytes
    assert sorted(e["id"] for e in transport.accepted) == [0, 2]


def test_a_stream_is_used_once() -> None:
    """A stream re-entered after close is refused with a clear error (before: it reported
    "2 accepted of 1 read")."""
    async def main() -> None:
        async with client_for(InProcessTransport()) as client:
            stream = client.stream("order", source="POS")
            async with stream:
                await stream.send({"id": 1})
            with pytest.raises(RuntimeError, match="already used"):
                async with stream:
                    pass
            with pytest.raises(RuntimeError, match="closed"):
                await stream.send({"id": 2})
            assert stream.report.records_read == 1
    run_in_virtual_time(main())


def test_send_and_flush_after_the_run_died_raise_its_error() -> None:
    """After a sender crashed, send() and flush() raise the run's error, not hang."""
    transport = InProcessTransport(lambda n, b: TypeError("bug"))

    async def main() -> IngestReport:
        async with client_for(transport) as client:
            stream = client.stream("order", source="POS", linger=0.01)
            await stream.__aenter__()
            await stream.send({"id": 1})
            await asyncio.sleep(1.0)  # the lone record left, and its sender crashed
            with pytest.raises(PipelineError, match="sender crashed"):
                await stream.flush()
            with pytest.raises(PipelineError, match="sender crashed"):
                await stream.send({"id": 2})
            with pytest.raises(PipelineError, match="sender crashed"):
                await stream.__aexit__(None, None, None)
            return stream.report
    report = run_in_virtual_time(main())
    assert report.records_in_doubt == 1  # its request was under way when the bug hit


def test_a_queue_as_records_is_refused() -> None:
    """An asyncio.Queue has no end: ingest_many refuses it with a TypeError pointing at
    stream() (before: it waited forever)."""
    async def main() -> None:
        async with client_for(InProcessTransport()) as client:
            with pytest.raises(TypeError, match="stream"):
                await client.ingest_many("order", asyncio.Queue(),  # type: ignore[arg-type]
                                         source="POS")
    run_in_virtual_time(main())


def test_bad_bulk_arguments_are_refused_by_name() -> None:
    """Wrong types and out-of-range values are refused at the call, naming the argument."""
    async def main() -> None:
        async with client_for(InProcessTransport()) as client:
            cases: list[tuple[dict[str, Any], type[Exception], str]] = [
                ({"batch_size": True}, TypeError, "batch_size"),
                ({"batch_size": 51}, ValueError, "batch_size"),
                ({"concurrency": 0}, ValueError, "concurrency"),
                ({"max_batch_bytes": "x"}, TypeError, "max_batch_bytes"),
                ({"max_batch_bytes": 10}, ValueError, "max_batch_bytes"),
                ({"retry": "x"}, TypeError, "retry"),
                ({"shutdown_timeout": "x"}, TypeError, "shutdown_timeout"),
                ({"shutdown_timeout": float("nan")}, ValueError, "shutdown_timeout"),
                ({"init_data": "yes"}, TypeError, "init_data"),
                ({"on_progress": 3}, TypeError, "on_progress"),
                ({"dead_letter": 3}, TypeError, "dead_letter"),
            ]
            for kwargs, error, name in cases:
                with pytest.raises(error, match=name):
                    await client.ingest_many("order", [{"id": 1}], source="POS", **kwargs)
            with pytest.raises(ValueError, match="linger"):
                client.stream("order", source="POS", linger=0)
            with pytest.raises(ValueError, match="max_pending"):
                client.stream("order", source="POS", max_pending=0)
    run_in_virtual_time(main())


def test_an_async_on_progress_is_awaited() -> None:
    """on_progress may be a coroutine function: it is awaited after each batch."""
    seen: list[int] = []

    async def progress(report: IngestReport) -> None:
        await asyncio.sleep(0)
        seen.append(report.records_accepted)
    report = run_many(InProcessTransport(), 120, batch_size=50, concurrency=1,
                      on_progress=progress)
    assert seen == [50, 100, 120]
    assert report.records_accepted == 120


async def test_a_client_can_be_opened_again() -> None:
    """A second 'async with' on one client works fully (a new session, a new token), and
    is_closed says where it stands (before: aiohttp's "Session is closed")."""
    async with FakePangoCDP(rate_limits=None) as fake:
        client = PangoCDPClient(**fake.client_kwargs(), rate_limits=())
        assert client.is_closed
        for i in range(2):
            async with client:
                assert not client.is_closed
                await client.ingest("order", [{"id": i}], source="POS")
            assert client.is_closed
    assert [e["id"] for e in fake.accepted] == [0, 1]
    assert client.auth_calls == 2


def test_a_bad_record_in_a_stream_is_refused_at_send() -> None:
    """stream.send() refuses a record it cannot encode, naming the field; it is not read."""
    async def main() -> IngestReport:
        async with client_for(InProcessTransport()) as client:
            async with client.stream("order", source="POS") as stream:
                with pytest.raises(RequestValidationError, match="price"):
                    await stream.send({"id": 1, "price": float("nan")})
                await stream.send({"id": 2})
            return stream.report
    report = run_in_virtual_time(main())
    assert report.records_read == 1
    assert report.records_accepted == 1


def test_the_readme_in_process_example_runs() -> None:
    """The README's InProcessTransport example, as written there."""
    async def main() -> None:
        transport = InProcessTransport(latency=0.2)
        async with PangoCDPClient(api_key="k", token="t", transport=transport) as client:
            report = await client.ingest_many("order", ({"id": i} for i in range(500)),
                                              source="POS")
        assert report.records_accepted == len(transport.accepted) == 500

    run_in_virtual_time(main())


def test_requests_in_flight_when_the_shutdown_timeout_runs_out_are_in_doubt() -> None:
    """Cancelled while its request takes 10 s, with 0.5 s to finish: the batch is in doubt
    (the server may have stored it), not unsent."""
    async def main() -> IngestReport:
        async with client_for(InProcessTransport(latency=10.0)) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(50)], source="POS", shutdown_timeout=0.5))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.last_report is not None
            return client.last_report
    report = run_in_virtual_time(main())
    assert report.records_in_doubt == 50
    assert report.records_unsent == 0
