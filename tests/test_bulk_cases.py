"""Bulk runs, case by case: the outcomes that are a choice (in doubt or failed), linger, the
stream's and the client's lifecycle, arguments refused; on virtual time, no sockets."""

from __future__ import annotations

import asyncio
import random
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
from pangocdp_async._bulk._handover import Handover, StreamClosed
from pangocdp_async.testing import FakePangoCDP, InProcessTransport, run_in_virtual_time

FAST = RetryPolicy(backoff_initial_s=0.01, max_attempts=3)


def client_for(transport: InProcessTransport, **kwargs: Any) -> PangoCDPClient:
    kwargs.setdefault("retry", FAST)
    return PangoCDPClient(api_key="k", token="t", transport=transport, rate_limits=(),
                          **kwargs)


async def cancel_after(client: PangoCDPClient, task: asyncio.Future[Any],
                       seconds: float) -> IngestReport:
    """Cancel ``task`` (a bulk run of ``client``) after ``seconds``; its report."""
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.last_report is not None
    return client.last_report


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
            return await cancel_after(client, task, 1.0)
    report = run_in_virtual_time(main())
    assert report.records_in_doubt == 50
    assert report.records_unsent == 0


def _listed(report: IngestReport, stored: list[dict[str, Any]]) -> set[int]:
    """Ids of records the report or the server accounts for."""
    return ({f.record["id"] for f in report.failures} | {u.record["id"] for u in report.unsent}
            | {d.record["id"] for d in report.in_doubt} | {e["id"] for e in stored})


@pytest.mark.parametrize("cancel_at", [0.05, 0.3, 0.62, 1.1, 2.3])
def test_stream_with_many_producers_cancelled_loses_nothing_sent(cancel_at: float) -> None:
    """50 producers send into a stream with room for 3 while it is cancelled: every record
    whose send() returned is accounted for, none whose send() raised is, and the sum holds
    (before: positions counted records that never arrived, and records vanished)."""
    transport = InProcessTransport(latency=0.2)

    async def main() -> tuple[IngestReport, list[int], list[int]]:
        returned: list[int] = []
        refused: list[int] = []
        async with client_for(transport) as client:
            async def block() -> None:
                async with client.stream("order", source="POS", linger=0.05, concurrency=2,
                                         batch_size=5, max_pending=3) as stream:
                    async def producer(k: int) -> None:
                        for j in range(4):
                            try:
                                await stream.send({"id": k * 100 + j})
                            except BaseException:
                                refused.append(k * 100 + j)
                                raise
                            returned.append(k * 100 + j)
                    await asyncio.gather(*(producer(k) for k in range(50)),
                                         return_exceptions=True)
            task = asyncio.ensure_future(block())
            await asyncio.sleep(cancel_at)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.last_report is not None
            return client.last_report, returned, refused
    report, returned, refused = run_in_virtual_time(main())
    listed = _listed(report, transport.accepted)
    assert set(returned) <= listed
    assert not set(refused) & listed
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read


def test_records_handed_to_a_dead_stream_are_accounted_for() -> None:
    """A sender crashes while another request is slow; producers keep sending: each send()
    either raises or its record ends in the report (before: 38 of 40 vanished)."""
    def respond(n: int, body: bytes) -> RawResponse | BaseException:
        return TypeError("bug") if n == 2 else RawResponse(200, CIMultiDict(), b'{"success":1}')
    transport = InProcessTransport(respond, latency=0.5)

    async def main() -> tuple[IngestReport, list[int]]:
        returned: list[int] = []
        async with client_for(transport) as client:
            async def produce() -> None:
                async with client.stream("order", source="POS", linger=0.01, batch_size=1,
                                         concurrency=2) as stream:
                    for i in range(40):
                        await stream.send({"id": i})
                        returned.append(i)
                        await asyncio.sleep(0.05)
            with pytest.raises(PipelineError):
                await produce()
            assert client.last_report is not None
            return client.last_report, returned
    report, returned = run_in_virtual_time(main())
    assert set(returned) <= _listed(report, transport.accepted)
    assert len(returned) < 40  # send() did raise once the run was dead


def test_cancelled_while_writing_refused_records_to_an_async_sink() -> None:
    """The fast path is cancelled while an async dead-letter sink writes the records it
    refused: the batch read with them is not lost (before: 4 of 5 records were nowhere)."""
    async def slow_sink(failure: Any) -> None:
        await asyncio.sleep(10.0)

    async def main() -> IngestReport:
        async with client_for(InProcessTransport()) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": 0}, None, None, {"id": 3}, {"id": 4}], source="POS",
                dead_letter=slow_sink))
            return await cancel_after(client, task, 1.0)
    report = run_in_virtual_time(main())
    assert report.records_read == 5
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == 5


@pytest.mark.parametrize("way", ["iterable", "async"])
def test_a_cancellation_from_inside_a_task_is_a_crash_not_a_hang(way: str) -> None:
    """The transport raises CancelledError (nobody cancelled the run): PipelineError at once
    (before: the run hung with its reader blocked)."""
    transport = InProcessTransport(lambda n, b: asyncio.CancelledError())

    async def records() -> Any:
        for i in range(40):
            yield {"id": i}

    async def main() -> IngestReport:
        async with client_for(transport) as client:
            source: Any = records() if way == "async" else [{"id": i} for i in range(40)]
            with pytest.raises(PipelineError):
                await asyncio.wait_for(client.ingest_many(
                    "order", source, source="POS", concurrency=1, batch_size=1), 60)
            assert client.last_report is not None
            return client.last_report
    report = run_in_virtual_time(main())
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read


def test_a_second_cancel_still_returns_a_whole_report() -> None:
    """Cancelled twice while shutting down: the report handed back is whole (before: half
    built, finished in the background later)."""
    async def main() -> IngestReport:
        async with client_for(InProcessTransport(latency=1.0)) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", ({"id": i} for i in range(70)), source="POS", batch_size=10,
                concurrency=2, shutdown_timeout=5.0))
            await asyncio.sleep(1.5)
            task.cancel()
            return await cancel_after(client, task, 0.1)
    report = run_in_virtual_time(main())
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read


def test_no_request_starts_after_a_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender waiting out a backoff when the run is cancelled stops: no request begins
    after the cancel, and its records are unsent (before: it retried during the timeout).
    (The backoff's jitter is pinned to its cap: drawn near 0, the retry would be answered
    before the cancel, about one run in ten.)"""
    monkeypatch.setattr(random.Random, "uniform", lambda self, low, high: high)
    started: list[float] = []

    async def main() -> IngestReport:
        loop = asyncio.get_running_loop()

        def respond(n: int, body: bytes) -> RawResponse:
            started.append(loop.time())
            return RawResponse(503 if n == 2 else 200, CIMultiDict(), b"{}")
        policy = RetryPolicy(backoff_initial_s=2.0, backoff_max_s=2.0)
        async with client_for(InProcessTransport(respond, latency=0.1), retry=policy) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", ({"id": i} for i in range(20)), source="POS", batch_size=10,
                concurrency=2))
            return await cancel_after(client, task, 0.3)
    report = run_in_virtual_time(main())
    assert max(started) < 0.3
    assert report.records_unsent == 10


def test_flush_waits_for_the_batches_it_covers() -> None:
    """flush() returns only once everything sent before it is settled, even if a later batch
    finishes first (before: it counted batches and returned early); and it works without
    linger."""
    class SlowFirst(InProcessTransport):
        async def post(self, url: Any, *, body: bytes, headers: Any,
                       params: Any = None) -> RawResponse:
            ids = [e["id"] for e in orjson.loads(body)["entries"]]
            await asyncio.sleep(3.0 if 0 in ids else 0.01)
            self.accepted.extend(orjson.loads(body)["entries"])
            return RawResponse(200, CIMultiDict(), b'{"success":true}')
    transport = SlowFirst()

    async def main() -> float:
        async with client_for(transport) as client:
            async with client.stream("order", source="POS", linger=None,  # type: ignore[arg-type]
                                     concurrency=2, batch_size=2) as stream:
                await stream.send({"id": 0})

                async def later() -> None:
                    await asyncio.sleep(0.2)
                    await stream.send({"id": 1})
                    await stream.send({"id": 2})
                background = asyncio.ensure_future(later())
                await stream.flush()
                assert any(e["id"] == 0 for e in transport.accepted)
                await background
                return asyncio.get_running_loop().time()
    assert run_in_virtual_time(main()) >= 3.0


def test_a_record_whose_serializer_raises_is_failed_not_lost() -> None:
    """A pydantic record whose serializer raises is refused with its position; the rest of
    its batch is sent (before: the whole batch vanished)."""
    from pydantic import BaseModel, field_serializer

    class Order(BaseModel):
        id: int

        @field_serializer("id")
        def boom(self, value: int) -> int:
            if value == 7:
                raise ValueError("cannot serialize")
            return value
    transport = InProcessTransport()

    async def main() -> IngestReport:
        async with client_for(transport) as client:
            return await client.ingest_many("order", [Order(id=i) for i in range(20)],
                                            source="POS")
    report = run_in_virtual_time(main())
    assert [f.position for f in report.failures] == [7]
    assert report.records_accepted == 19


def test_a_gateway_timeout_makes_records_in_doubt() -> None:
    """504 on every attempt: the server behind the gateway may have stored them (in doubt)."""
    transport = InProcessTransport(lambda n, b: RawResponse(504, CIMultiDict(), b""))
    report = run_many(transport, 5)
    assert report.records_in_doubt == 5
    assert report.records_failed == 0


def test_concurrency_is_capped() -> None:
    """concurrency above 1,000 is refused (each sender costs memory up front)."""
    with pytest.raises(ValueError, match="concurrency"):
        run_many(InProcessTransport(), 1, concurrency=10**6)


def test_an_on_progress_that_raises_stops_the_run() -> None:
    """on_progress is the caller's code: if it raises, the run stops with PipelineError (as
    the README says), every record read accounted for."""
    def progress(report: IngestReport) -> None:
        raise RuntimeError("bug in the caller's callback")

    async def main() -> IngestReport:
        async with client_for(InProcessTransport()) as client:
            with pytest.raises(PipelineError):
                await client.ingest_many("order", ({"id": i} for i in range(500)),
                                         source="POS", on_progress=progress, concurrency=1)
            assert client.last_report is not None
            return client.last_report
    report = run_in_virtual_time(main())
    assert report.records_accepted == 50
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read


def test_stream_pending_counts_records_not_yet_taken_and_errors_name_the_position() -> None:
    """pending counts what send() handed over and the run has not taken (0 when empty, 0
    after the block); a refused record is named by its position among the records taken."""
    async def main() -> tuple[list[int], IngestReport]:
        seen: list[int] = []
        async with client_for(InProcessTransport()) as client:
            stream = client.stream("order", source="POS", max_pending=7, linger=10.0,
                                   max_batch_bytes=1_000)
            assert stream.max_pending == 7
            async with stream:
                seen.append(stream.pending)
                for i in range(3):
                    await stream.send({"id": i})  # room left: returns without yielding
                seen.append(stream.pending)
                await asyncio.sleep(0.001)
                seen.append(stream.pending)  # the run took all three
                with pytest.raises(RequestValidationError) as bad:
                    await stream.send({"id": 3, "v": float("nan")})
                assert bad.value.index == 3
                with pytest.raises(RequestValidationError, match=r"^entries\[3\]: .* 5,0"):
                    await stream.send({"id": 3, "blob": "x" * 5_000})
                await stream.send({"id": 3})
            seen.append(stream.pending)
            return seen, stream.report
    seen, report = run_in_virtual_time(main())
    assert seen == [0, 3, 0, 0]
    assert report.records_read == report.records_accepted == 4


def test_stream_misuse_errors_say_what_to_do() -> None:
    """send() outside 'async with' says how to use a stream; entering a stream that is open
    is refused like entering a used one; after the block send() says the stream is closed."""
    async def main() -> None:
        async with client_for(InProcessTransport()) as client:
            stream = client.stream("order", source="POS")
            with pytest.raises(RuntimeError,
                               match=r"^use the stream as 'async with client\.stream"):
                await stream.send({"id": 1})
            async with stream:
                with pytest.raises(RuntimeError, match=r"^this stream was already used; "):
                    await stream.__aenter__()
                await stream.send({"id": 1})
            with pytest.raises(RuntimeError, match=r"^the stream is closed$"):
                await stream.send({"id": 2})
            assert stream.report.records_read == 1
    run_in_virtual_time(main())


def test_a_send_while_the_block_is_ending_is_refused_not_stranded() -> None:
    """Another task's send() while the block is flushing on exit raises StreamClosed (its
    record is not the run's); the report holds exactly the records whose send() returned."""
    async def main() -> tuple[IngestReport, list[str]]:
        outcome: list[str] = []
        async with client_for(InProcessTransport(latency=1.0)) as client:
            stream = client.stream("order", source="POS", linger=0.01)

            async def late() -> None:
                await asyncio.sleep(0.5)  # the block is waiting for its batch now
                try:
                    await stream.send({"id": 99})
                    outcome.append("taken")
                except RuntimeError as exc:
                    outcome.append(str(exc))
            task = asyncio.ensure_future(late())
            async with stream:
                await stream.send({"id": 1})
            await task
            return stream.report, outcome
    report, outcome = run_in_virtual_time(main())
    assert outcome == ["the stream is closed"]
    assert report.records_read == report.records_accepted == 1


def test_cancelling_a_stream_block_raises_cancelled_even_after_the_run_failed() -> None:
    """The block is cancelled after its run already died: the caller sees CancelledError
    (what it asked for), not the run's error, and the report is still delivered."""
    transport = InProcessTransport(lambda n, b: TypeError("bug"))

    async def main() -> IngestReport | None:
        async with client_for(transport) as client:
            async def block() -> None:
                async with client.stream("order", source="POS", linger=0.01) as stream:
                    await stream.send({"id": 1})
                    await asyncio.Event().wait()
            task = asyncio.ensure_future(block())
            await asyncio.sleep(1.0)  # the run died on the sender's bug meanwhile
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return client.last_report
    report = run_in_virtual_time(main())
    assert report is not None
    assert report.records_in_doubt == 1


def test_a_closed_handover_refuses_records_and_markers_by_name() -> None:
    """Once closed, the stream's buffer refuses a record or a marker with StreamClosed, and
    hands back what was buffered and never taken."""
    async def main() -> None:
        handover = Handover(2)
        await handover.put("a")
        handover.put_marker("flush")
        assert handover.close() == ["a", "flush"]
        assert len(handover) == 0
        with pytest.raises(StreamClosed, match=r"^the stream is closed$"):
            await handover.put("b")
        with pytest.raises(StreamClosed, match=r"^the stream is closed$"):
            handover.put_marker("end")
    run_in_virtual_time(main())
