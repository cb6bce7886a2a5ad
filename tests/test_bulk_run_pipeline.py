"""A bulk run as a whole: the errors it raises, shutdown (cancelled during a stop, tasks
cancelled from outside, the code it called finished before it returns), linger, flush. On
virtual time, through the scripted server of test_bulk_run_sender."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from pangocdp_async import (
    IngestReport,
    PangoCDPClient,
    PipelineError,
    RawResponse,
    RecordSourceError,
)
from pangocdp_async._bulk._handover import StreamClosed
from pangocdp_async.testing import VirtualTimeLoop, run_in_virtual_time
from tests.test_bulk_cases import cancel_after
from tests.test_bulk_run_sender import OK, Server, client_for, reply, whole


def test_an_async_source_that_raises_is_named_in_the_error() -> None:
    """The async record source raises after 3 records: RecordSourceError names the source's
    exception type and counts, carries the whole report, and has the exception as cause."""
    async def rows() -> AsyncIterator[dict[str, int]]:
        for i in range(3):
            yield {"id": i}
        raise KeyError("gone")

    async def main() -> RecordSourceError:
        async with client_for(Server()) as client:
            with pytest.raises(RecordSourceError) as info:
                await client.ingest_many("order", rows(), source="POS")
            assert info.value.report is client.last_report
            return info.value
    error = run_in_virtual_time(main())
    assert str(error).startswith("the record source raised KeyError after 3 records; ")
    assert isinstance(error.__cause__, KeyError)
    assert error.report.records_read == 3
    assert whole(error.report)


def test_a_sender_crash_is_named_in_the_error() -> None:
    """The transport raises a TypeError (a bug): PipelineError names it with its message, and
    counts the records not sent and in doubt."""
    server = Server(lambda ids: TypeError("bug in the transport"))

    async def main() -> PipelineError:
        async with client_for(server) as client:
            with pytest.raises(PipelineError) as info:
                await client.ingest_many("order", [{"id": i} for i in range(3)],
                                         source="POS", concurrency=1)
            return info.value
    error = run_in_virtual_time(main())
    assert str(error) == ("a sender crashed (TypeError: bug in the transport); 0 records not "
                          "sent, 3 in doubt")
    assert error.report.records_in_doubt == 3


def test_a_cancel_during_the_stop_for_refused_credentials_is_raised() -> None:
    """The run stops because the server refuses the token, while another sender's request is
    still under way; the caller cancels meanwhile: CancelledError, once that request was
    answered, and the report is whole."""
    server = Server(lambda ids: reply(401, message="token refused") if ids == [1] else OK,
                    delay=lambda ids: 10.0 if ids == [0] else 0.0)

    async def main() -> tuple[IngestReport, float]:
        loop = asyncio.get_running_loop()
        async with client_for(server) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(2)], source="POS", batch_size=1,
                concurrency=2))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.last_report is not None
            return client.last_report, loop.time()
    report, returned_at = run_in_virtual_time(main())
    assert returned_at == pytest.approx(10.0, abs=0.01)
    assert report.stopped_by is not None
    assert report.records_accepted == 1
    assert whole(report)


def test_senders_cancelled_from_outside_before_they_start_are_a_pipeline_error() -> None:
    """Something cancels the run's tasks before they ran at all (a client closed under it):
    PipelineError saying so, not a crash of the shutdown."""
    async def main() -> str:
        async with client_for(Server()) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(10)], source="POS", concurrency=2))
            await asyncio.sleep(0)  # the run made its senders; none has run yet
            mine = {asyncio.current_task(), task}
            for other in asyncio.all_tasks():
                if other not in mine:
                    other.cancel()
            with pytest.raises(PipelineError) as info:
                await task
            return str(info.value)
    assert run_in_virtual_time(main()).startswith(
        "a sender crashed (CancelledError: a task of the run was cancelled from outside (was "
        "the client closed?)); ")


def test_a_cancelled_run_returns_after_the_source_finished_cleaning_up() -> None:
    """Cancelled while the reader waits for the async source: the source's own cleanup (which
    takes a moment) has finished when CancelledError reaches the caller."""
    cleaned: list[bool] = []

    async def rows() -> AsyncIterator[dict[str, int]]:
        try:
            for i in range(1_000):
                await asyncio.sleep(0.1)
                yield {"id": i}
        finally:
            await asyncio.sleep(0.05)
            cleaned.append(True)

    async def main() -> IngestReport:
        async with client_for(Server()) as client:
            task = asyncio.ensure_future(client.ingest_many("order", rows(), source="POS"))
            report = await cancel_after(client, task, 1.05)
            assert cleaned == [True]  # (its cleanup was done when CancelledError came)
            return report
    assert whole(run_in_virtual_time(main()))


def test_a_cancelled_run_returns_after_on_progress_finished_cleaning_up() -> None:
    """Cancelled while an async on_progress is awaited (a sender with no request under way):
    the callback's cleanup has finished when CancelledError reaches the caller."""
    cleaned: list[bool] = []

    async def progress(report: IngestReport) -> None:
        try:
            await asyncio.sleep(10.0)
        finally:
            await asyncio.sleep(0.05)
            cleaned.append(True)

    async def main() -> IngestReport:
        async with client_for(Server()) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(100)], source="POS", on_progress=progress,
                concurrency=1))
            report = await cancel_after(client, task, 1.0)
            assert cleaned == [True]  # (its cleanup was done when CancelledError came)
            return report
    report = run_in_virtual_time(main())
    assert report.records_accepted == 50
    assert whole(report)


def test_a_request_cancelled_at_the_shutdown_timeout_finished_before_the_run_returns() -> None:
    """A request still under way when the shutdown timeout runs out is cancelled; the
    transport's cleanup has finished when CancelledError reaches the caller."""
    cleaned: list[bool] = []

    class Slow(Server):
        async def post(self, url: Any, *, body: bytes, headers: Any,
                       params: Any = None) -> RawResponse:
            try:
                await asyncio.sleep(10.0)
            finally:
                await asyncio.sleep(0.05)
                cleaned.append(True)
            return OK

    async def main() -> IngestReport:
        async with client_for(Slow()) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(5)], source="POS", shutdown_timeout=0.5))
            report = await cancel_after(client, task, 1.0)
            assert cleaned == [True]  # (its cleanup was done when CancelledError came)
            return report
    report = run_in_virtual_time(main())
    assert report.records_in_doubt == 5
    assert whole(report)


def test_a_flush_racing_the_blocks_exit_returns() -> None:
    """A flush() begun just as the block exits (its marker lands after the stream's end):
    it returns once what it covers is settled, without an error."""
    server = Server()

    async def main() -> IngestReport:
        async with client_for(server) as client:
            async with client.stream("order", source="POS", linger=10.0) as stream:
                await stream.send({"id": 1})
                flushing = asyncio.ensure_future(stream.flush())
                await asyncio.sleep(0)  # flush() has started; its marker is not yet in
            await flushing
            return stream.report
    report = run_in_virtual_time(main())
    assert report.records_accepted == 1
    assert server.sent == [[1]]


def test_a_flush_when_the_stream_stops_says_so() -> None:
    """flush() waits for a batch still under way when the run stops (the token is refused for
    another batch): StreamClosed saying the stream stopped before everything was settled."""
    server = Server(lambda ids: reply(401, message="token refused") if ids == [1] else OK,
                    delay=lambda ids: 10.0 if ids == [0] else 0.0)

    async def main() -> str:
        async with client_for(server) as client:
            stream = client.stream("order", source="POS", batch_size=1, concurrency=2)
            async with stream:
                await stream.send({"id": 0})
                await stream.send({"id": 1})
                with pytest.raises(StreamClosed) as info:
                    await stream.flush()
            return str(info.value)
    assert run_in_virtual_time(main()) == "the stream stopped before everything was settled"


def test_linger_sends_each_partial_batch_in_turn() -> None:
    """Records sent 2 s apart to a stream with linger=1: each leaves alone, 1 s after it was
    sent."""
    async def main() -> list[tuple[float, list[int]]]:
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, list[int]]] = []

        def answer(ids: list[int]) -> RawResponse:
            sent.append((round(loop.time(), 3), ids))
            return OK
        async with client_for(Server(answer)) as client:
            async with client.stream("order", source="POS", linger=1.0) as stream:
                for i in range(3):
                    await stream.send({"id": i})
                    await asyncio.sleep(2.0)
        return sent
    assert run_in_virtual_time(main()) == [(1.0, [0]), (3.0, [1]), (5.0, [2])]


def test_a_bad_last_record_of_an_async_source_is_counted_read() -> None:
    """The last record of an async source cannot be encoded: it is failed, and counted among
    the records read."""
    async def rows() -> AsyncIterator[Any]:
        yield {"id": 0}
        yield {"id": 1, "price": float("nan")}

    async def main() -> IngestReport:
        async with client_for(Server()) as client:
            return await client.ingest_many("order", rows(), source="POS")
    report = run_in_virtual_time(main())
    assert report.records_read == 2
    assert [f.position for f in report.failures] == [1]
    assert report.records_accepted == 1


T = TypeVar("T")


def run_on(loop: VirtualTimeLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on ``loop`` (a virtual-time loop with its own clock)."""
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class ExactClockLoop(VirtualTimeLoop):
    """Virtual time on a clock that reads the same between turns of the loop, as a coarse
    clock does: a timer fires when the clock reads exactly its deadline."""

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


async def _a_lone_record_lingering(wait: float) -> list[tuple[float, list[int]]]:
    """A stream with linger=0.5 and one record: what the server received in ``wait`` seconds
    (when, which ids), before leaving the block could flush anything."""
    server = Server()
    async with client_for(server) as client:
        async with client.stream("order", source="POS", linger=0.5) as stream:
            await stream.send({"id": 0})
            await asyncio.sleep(wait)
            return list(zip(server.sent_at, server.sent, strict=True))


def test_linger_on_a_clock_that_reads_exactly_the_deadline() -> None:
    """With linger=0.5 the partial batch leaves when the clock reads 0.5, also on a clock that
    does not move between turns of the loop."""
    assert run_on(ExactClockLoop(), _a_lone_record_lingering(2.0)) == [(0.5, [0])]

TICK = 2.0 ** -10


class TickingClockLoop(VirtualTimeLoop):
    """Virtual time on a clock that moves while code runs, as a real one does: every reading
    is one tick later than the one before."""

    def time(self) -> float:
        self._virtual_now += TICK
        return self._virtual_now


def test_linger_cuts_a_backlog_once_the_deadline_is_read() -> None:
    """20 records handed over at once to a stream with linger = 8 ticks of a clock that moves
    while the run works: the partial batch leaves as soon as the clock reads its deadline,
    holding the 8 records taken until then; every record is accepted once."""
    sent: list[list[int]] = []

    async def main() -> IngestReport:
        def answer(ids: list[int]) -> RawResponse:
            sent.append(ids)
            return OK
        async with client_for(Server(answer)) as client:
            async with client.stream("order", source="POS", linger=8 * TICK,
                                     max_pending=100) as stream:
                for i in range(20):
                    await stream.send({"id": i})
            return stream.report

    report = run_on(TickingClockLoop(), main())
    assert sent[0] == list(range(8))
    assert sorted(i for ids in sent for i in ids) == list(range(20))
    assert report.records_accepted == 20


class CoarseClockLoop(VirtualTimeLoop):
    """Virtual time on a loop that runs a timer up to 0.2 s before it is due, as asyncio does
    within the clock's resolution (15.6 ms on Windows)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock_resolution = 0.2

    def advance(self, seconds: float) -> None:
        # A long wait ends 0.15 s early, and the timer runs then (within the resolution).
        super().advance(seconds - 0.15 if seconds > 0.15 else seconds)


def test_linger_holds_when_the_timer_fires_early() -> None:
    """With linger=0.5 on a loop whose timers fire early, the lone record still leaves at
    its deadline, with no flush and no other record to carry it."""
    sent = run_on(CoarseClockLoop(), _a_lone_record_lingering(5.0))
    assert [ids for _, ids in sent] == [[0]]
    assert 0.5 <= sent[0][0] <= 0.75

def _run_logs(caplog: pytest.LogCaptureFixture, server: Server, n: int,
              cancel_at: float | None = None) -> tuple[IngestReport, list[tuple[int, str]]]:
    """A run of ``n`` records (batches of 2, one sender), cancelled at ``cancel_at`` if set:
    its report and what it logged (level, message)."""
    async def main() -> IngestReport:
        async with client_for(server) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(n)], source="POS", batch_size=2,
                concurrency=1))
            if cancel_at is not None:
                await asyncio.sleep(cancel_at)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                await task
            assert client.last_report is not None
            return client.last_report
    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        report = run_in_virtual_time(main())
    return report, [(r.levelno, r.getMessage()) for r in caplog.records
                    if r.name == "pangocdp_async" and r.getMessage().startswith("ingest ")]


def test_a_finished_run_logs_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line at the end, with the report's summary: what operators read."""
    report, logged = _run_logs(caplog, Server(), 5)
    assert report.records_accepted == 5
    assert logged == [(logging.INFO, f"ingest finished: {report.summary()}")]


def test_a_cancelled_run_logs_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    """Cancelled while the second batch is under way: the run lets its answer come, then
    logs one WARNING with the summary of the whole report, the time included, and no
    "finished" line."""
    report, logged = _run_logs(caplog, Server(delay=lambda ids: 5.0), 6, cancel_at=7.0)
    assert report.cancelled
    assert (report.records_accepted, report.records_read) == (4, 4)
    assert report.elapsed_s == pytest.approx(10.0)
    assert logged == [(logging.WARNING, f"ingest cancelled: {report.summary()}")]
    assert " 10.0 s " in logged[0][1]
    assert logged[0][1].endswith(" [cancelled]")


def test_a_run_stopped_early_logs_why_and_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    """Refused credentials stop the run: a WARNING naming the server's error and the
    summary, then the "finished" line (the run returns its report)."""
    report, logged = _run_logs(caplog, Server(lambda ids: reply(401, message="no"),
                                              delay=lambda ids: 3.0), 6)
    assert report.stopped_by is not None
    assert report.elapsed_s == pytest.approx(3.0)
    assert logged == [
        (logging.WARNING, f"ingest stopped early: every batch is refused ({report.stopped_by}): "
                          f"{report.summary()}"),
        (logging.INFO, f"ingest finished: {report.summary()}"),
    ]


def test_batches_waiting_for_a_sender_are_counted_while_they_wait() -> None:
    """Two senders held by a slow server, a stream of 2-record batches: the run queues twice
    as many batches as it has senders and no more; ``client.stats.queue_depth`` shows them
    while they wait and nothing once the run is over, and ``max_batches_queued`` keeps the
    most seen (0 for a stream that emitted nothing)."""
    async def main() -> tuple[list[int], int, int, int, int]:
        depths: list[int] = []
        async with client_for(Server(delay=lambda ids: 10.0)) as client:
            async with client.stream("order", source="POS", batch_size=2, concurrency=2,
                                     max_pending=4) as stream:
                assert client.stats.queue_depth == 0
                producer = asyncio.ensure_future(asyncio.gather(
                    *(stream.send({"id": i}) for i in range(20))))
                for pause in (1.0, 10.0, 10.0, 10.0):  # each sample between two answers
                    await asyncio.sleep(pause)
                    depths.append(client.stats.queue_depth)
                await producer
            after = client.stats.queue_depth
            async with client.stream("order", source="POS") as empty:
                pass
            return (depths, stream.max_batches_queued, after, empty.max_batches_queued,
                    stream.report.records_accepted)
    depths, most, after, empty_most, accepted = run_in_virtual_time(main())
    # 10 batches: 2 in flight, 4 waiting, the rest held back; at 31 s 6 were answered
    assert depths == [4, 4, 4, 2]
    assert (most, after, empty_most, accepted) == (4, 0, 0, 20)


def test_a_run_stopped_early_stops_reading_its_source() -> None:
    """Refused credentials stop a run reading an async source: once it returns, the source is
    read no further (its reader was stopped, not left to run) and every record it yielded is
    in the report."""
    yielded: list[int] = []

    async def rows() -> AsyncIterator[dict[str, int]]:
        for i in range(1_000):
            yielded.append(i)
            yield {"id": i}

    async def main() -> tuple[IngestReport, int, int]:
        async with client_for(Server(lambda ids: reply(401, message="no"),
                                     delay=lambda ids: 1.0)) as client:
            report = await client.ingest_many("order", rows(), source="POS", batch_size=2,
                                              concurrency=1)
            at_return = len(yielded)
            await asyncio.sleep(60.0)
            return report, at_return, len(yielded)
    report, at_return, later = run_in_virtual_time(main())
    assert report.stopped_by is not None
    assert later == at_return == report.records_read
    assert report.records_read < 20
    assert whole(report)


def test_a_stopped_runs_queue_is_not_counted_while_it_shuts_down() -> None:
    """The first batch is refused (401) while the other sender's request takes 20 s: from the
    stop on, ``client.stats.queue_depth`` shows no batch waiting (what was queued is unsent)
    during the shutdown and after it."""
    async def rows() -> AsyncIterator[dict[str, int]]:
        for i in range(100):
            yield {"id": i}

    server = Server(lambda ids: reply(401, message="no") if ids[0] == 0 else OK,
                    delay=lambda ids: 1.0 if ids[0] == 0 else 20.0)

    async def main() -> tuple[list[int], IngestReport]:
        seen: list[int] = []
        async with client_for(server) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", rows(), source="POS", batch_size=2, concurrency=2))
            for _ in range(4):
                await asyncio.sleep(3.0)
                seen.append(client.stats.queue_depth)
            report = await task
            seen.append(client.stats.queue_depth)
        return seen, report
    seen, report = run_in_virtual_time(main())
    assert report.stopped_by is not None
    assert report.records_unsent > 0  # the queued batches
    assert seen == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("answer", [OK, reply(401, message="no")], ids=["finished", "stopped"])
def test_a_client_keeps_nothing_of_a_run_but_its_last_report(answer: RawResponse) -> None:
    """A service calls ingest_many over and over: once a later run has taken its place, an
    earlier run's report (and so the run) is freed, whether it finished or was stopped."""
    async def main() -> tuple[weakref.ref[IngestReport], bool]:
        async with client_for(Server(lambda ids: answer)) as client:
            first = weakref.ref(await client.ingest_many(
                "order", [{"id": i} for i in range(4)], source="POS", concurrency=2,
                batch_size=2))
            second = await client.ingest_many("order", [{"id": 9}], source="POS")
            gc.collect()
            return first, client.last_report is second
    logging.disable(logging.WARNING)  # (pytest keeps the log records, and they the errors)
    try:
        first, kept_the_last = run_in_virtual_time(main())
    finally:
        logging.disable(logging.NOTSET)
    assert kept_the_last
    assert first() is None


@pytest.mark.parametrize("how", ["stopped", "cancelled", "block raises"])
def test_a_streams_linger_timer_never_fires_into_a_closed_stream(how: str) -> None:
    """A partial batch is lingering (5 s) when the stream's run stops (refused credentials),
    its task is cancelled, or its block raises: the linger timer goes with the run, so nothing
    reaches the event loop's exception handler later."""
    errors: list[dict[str, Any]] = []
    server = Server(lambda ids: reply(401, message="no")) if how == "stopped" \
        else Server(delay=lambda ids: 1.0)

    async def body(client: PangoCDPClient) -> None:
        async with client.stream("order", source="POS", batch_size=4, linger=5.0,
                                 concurrency=1) as stream:
            for i in range(4):
                await stream.send({"id": i})
            await asyncio.sleep(0.5)
            await stream.send({"id": 99})  # a partial batch: its linger ends at 5.5 s
            if how == "block raises":
                raise KeyError("the caller's own error")
            await asyncio.sleep(100.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        async with client_for(server) as client:
            task = asyncio.ensure_future(body(client))
            if how == "cancelled":
                await asyncio.sleep(1.0)
                task.cancel()
            with pytest.raises((StreamClosed, asyncio.CancelledError, KeyError)):
                await task
            await asyncio.sleep(20.0)  # well past the linger
    run_in_virtual_time(main())
    assert errors == []


def test_a_sender_whose_answer_comes_after_the_stop_starts_no_new_request() -> None:
    """Refused credentials stop the run while the other sender's request is under way; that
    request then fails with 503: the sender does not retry it (the run is stopping), and its
    batch is reported unsent (the server answered that it did not take it)."""
    server = Server(lambda ids: reply(401, message="no") if ids[0] == 0
                    else reply(503, message="busy"),
                    delay=lambda ids: 1.0 if ids[0] == 0 else 2.0)

    async def main() -> IngestReport:
        async with client_for(server) as client:
            return await client.ingest_many("order", [{"id": i} for i in range(4)],
                                            source="POS", batch_size=2, concurrency=2)
    report = run_in_virtual_time(main())
    assert report.stopped_by is not None
    assert server.sent == [[0, 1], [2, 3]]  # no second request for [2, 3]
    assert [u.position for u in report.unsent] == [2, 3]
    assert report.records_in_doubt == 0
    assert whole(report)


def test_records_left_by_a_stop_mid_split_are_unsent_in_the_order_read() -> None:
    """An async source, batches of 4: the first is refused (400), its left half then meets
    refused credentials (401). The run stops: the half refused is failed, and the rest of
    that batch and the batch queued behind it are unsent, in the order they were read."""
    async def rows() -> AsyncIterator[dict[str, int]]:
        for i in range(8):
            yield {"id": i}

    def answer(ids: list[int]) -> RawResponse:
        if ids == [0, 1, 2, 3]:
            return reply(400, success=False, errorCode="INVALID", message="bad")
        return reply(401, message="token refused") if ids == [0, 1] else OK

    async def main() -> IngestReport:
        async with client_for(Server(answer)) as client:
            return await client.ingest_many("order", rows(), source="POS", batch_size=4,
                                            concurrency=1)
    report = run_in_virtual_time(main())
    assert report.stopped_by is not None
    assert [f.position for f in report.failures] == [0, 1]
    assert [u.position for u in report.unsent] == [2, 3, 4, 5, 6, 7]
    assert whole(report)


def test_a_linger_wake_read_late_never_leaves_a_timer_behind() -> None:
    """A stream whose reader waits for room in the queue while its linger timer fires: the
    wake is read late, after a newer linger timer was armed. Cancelled then, the run leaves
    no timer behind to fire into the closed stream."""
    errors: list[dict[str, Any]] = []

    async def body(client: PangoCDPClient) -> None:
        async with client.stream("order", source="POS", batch_size=2, linger=1.0,
                                 concurrency=1, shutdown_timeout=0.0) as stream:
            for i in range(9):  # one batch sent, two queued, one waiting for room, one lingering
                await stream.send({"id": i})
            await asyncio.sleep(100.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        async with client_for(Server(delay=lambda ids: 10.0)) as client:
            task = asyncio.ensure_future(body(client))
            await asyncio.sleep(10.5)  # the reader has taken the late wake and re-armed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(20.0)
    run_in_virtual_time(main())
    assert errors == []
