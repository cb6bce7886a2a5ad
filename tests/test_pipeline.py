"""ingest_many and stream against FakePangoCDP over loopback: a result for every record."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pangocdp_async import (
    BadRequestError,
    IngestReport,
    PangoCDPClient,
    QuotaScheduler,
    RecordFailure,
    RecordSourceError,
    RequestValidationError,
    RetryPolicy,
)
from pangocdp_async.testing import FakePangoCDP
from tests.conftest import ManualClock, wait_until

FAST_RETRY = RetryPolicy(backoff_initial_s=0.001, backoff_max_s=0.004)


def _client(fake: FakePangoCDP, clock: ManualClock) -> PangoCDPClient:
    """A client whose scheduler pauses 10 ms after a 429 (plus its header)."""
    return PangoCDPClient(**fake.client_kwargs(),
                          limiter=QuotaScheduler((), retry_after_pad=0.01))


def _records(n: int) -> Iterator[dict[str, int]]:
    return ({"id": i, "v": i * 3} for i in range(n))


@pytest.mark.slow
async def test_10k_records_with_faults_none_lost(clock: ManualClock) -> None:
    """10,000 records, 5% 5xx, 2% dropped connections (half after the server stored the
    entries), scripted 429s: every record is accepted or reported; the fake lost none, and
    every duplicate it holds is one the report warned of."""
    script = ["ok"] * 20 + ["429:0"] + ["ok"] * 30 + ["429:1", "429:0"]
    async with FakePangoCDP(rate_limits=None, error_rate=0.05, drop_rate=0.01,
                            drop_after_rate=0.01, script=script, seed=11) as fake:
        async with _client(fake, clock) as client:
            report = await client.ingest_many("order", _records(10_000), source="POS",
                                              retry=FAST_RETRY, concurrency=8)
            stats = client.stats
    counts = collections.Counter(e["id"] for e in fake.accepted)
    failed = {f.position for f in report.failures}
    assert report.records_read == 10_000
    assert report.records_accepted + report.records_failed == 10_000
    assert not report.unsent
    assert set(counts) | failed == set(range(10_000))  # nothing lost
    assert report.records_failed == 0  # six attempts outlast a 7% fault rate
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates > 0  # the drop-after faults did produce some
    assert duplicates <= report.possible_duplicates
    assert report.rate_limited == 3
    assert report.retries >= report.rate_limited
    outcomes = collections.Counter(r.outcome for r in fake.requests)
    assert outcomes["fault"] > 0
    assert outcomes["dropped"] > 0
    assert report.requests == len(fake.requests)
    assert stats.rate_limited == 3
    assert stats.requests["2xx"] == outcomes["accepted"]
    assert stats.in_flight == 0


async def test_poison_entry_isolated(clock: ManualClock) -> None:
    """A poison entry in a batch of 50: 49 accepted, 1 reported with the server's message,
    at most 7 extra requests."""
    async with FakePangoCDP(rate_limits=None,
                            reject_entry=lambda e: "Missing momCode" if e["id"] == 17 else None
                            ) as fake:
        async with _client(fake, clock) as client:
            report = await client.ingest_many("custom-model", _records(50), source="CRM")
    assert report.records_accepted == 49
    assert sorted(e["id"] for e in fake.accepted) == [i for i in range(50) if i != 17]
    [failure] = report.failures
    assert failure.position == 17
    assert failure.record == {"id": 17, "v": 51}
    assert isinstance(failure.error, BadRequestError)
    assert failure.error.message is not None
    assert "Missing momCode" in failure.error.message
    assert report.requests - 1 <= 7


@pytest.mark.parametrize("poison", [{0}, {17}, {33}, {49}, {5, 40}, {20, 21}])
async def test_poison_entries_found_when_unnamed(clock: ManualClock, poison: set[int]) -> None:
    """Without an index in the server's message, a search by halves isolates every refused
    entry (one among 50 in at most 13 extra requests) and delivers all the others once."""
    async with FakePangoCDP(rate_limits=None, name_rejected_index=False,
                            reject_entry=lambda e: "Missing momCode" if e["id"] in poison
                            else None) as fake:
        async with _client(fake, clock) as client:
            report = await client.ingest_many("custom-model", _records(50), source="CRM")
    assert report.records_accepted == 50 - len(poison)
    assert sorted(e["id"] for e in fake.accepted) == [i for i in range(50) if i not in poison]
    assert sorted(f.position for f in report.failures) == sorted(poison)
    assert all(f.error.message == "Missing momCode" for f in report.failures)  # type: ignore[attr-defined]
    if len(poison) == 1:
        assert 6 <= report.requests - 1 <= 13


async def _async_records(n: int) -> AsyncIterator[dict[str, int]]:
    for record in _records(n):
        yield record


@pytest.mark.parametrize("kind", ["iterable", "async iterable"])
async def test_cancellation_reports_unsent(clock: ManualClock, kind: str) -> None:
    """Cancelled mid-run: requests under way finish; the unsent records plus the accepted
    ones plus the unread rest equal the input. (A plain iterable is read by the senders
    themselves, so nothing waits in a queue; an async one is read ahead into the queue.)"""
    source = _records(20_000) if kind == "iterable" else _async_records(20_000)
    async with FakePangoCDP(rate_limits=None, latency_s=0.005) as fake:
        async with _client(fake, clock) as client:
            enough = asyncio.Event()

            def progress(report: IngestReport) -> None:
                if report.records_accepted >= 1_000:
                    enough.set()

            run = asyncio.ensure_future(client.ingest_many(
                "order", source, source="POS", concurrency=4, on_progress=progress))
            await enough.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            report = client.last_report
    assert report is not None
    assert report.cancelled
    accepted = {e["id"] for e in fake.accepted}
    unsent = {u.position for u in report.unsent}
    if kind == "async iterable":
        assert report.unsent, "batches waiting in the queue are left unsent"
    else:
        assert not report.unsent
    assert len(accepted) == report.records_accepted
    assert not accepted & unsent
    assert accepted | unsent == set(range(report.records_read))
    assert report.records_read < 20_000  # the rest was never read
    assert all(u.record == {"id": u.position, "v": u.position * 3} for u in report.unsent)


async def test_record_source_error(clock: ManualClock, fake: FakePangoCDP) -> None:
    """A source that raises stops the run with RecordSourceError carrying the report."""
    def broken() -> Iterator[dict[str, int]]:
        yield from _records(120)
        raise OSError("disk gone")

    async with _client(fake, clock) as client:
        with pytest.raises(RecordSourceError, match="OSError after 120 records") as info:
            await client.ingest_many("order", broken(), source="POS")
    report = info.value.report
    assert isinstance(info.value.__cause__, OSError)
    accepted = {e["id"] for e in fake.accepted}
    assert accepted | {u.position for u in report.unsent} == set(range(120))
    assert len(accepted) == report.records_accepted


async def test_a_failing_dead_letter_sink_loses_nothing(clock: ManualClock) -> None:
    """A dead-letter callable that raises: the run goes on, the refused record stays in the
    report's failures, and the sink's error is reported (not blamed on the record source)."""
    def explode(failure: RecordFailure) -> None:
        raise RuntimeError("dead letter unavailable")

    async with FakePangoCDP(rate_limits=None, reject_entry=lambda e: "no" if e["id"] == 3
                            else None) as fake:
        async with _client(fake, clock) as client:
            report = await asyncio.wait_for(client.ingest_many(
                "order", _records(200), source="POS", batch_size=10, dead_letter=explode),
                timeout=60)
    assert isinstance(report.dead_letter_error, RuntimeError)
    assert [f.position for f in report.failures] == [3]
    assert report.records_accepted == 199
    assert len(fake.accepted) == 199


async def test_a_dead_letter_path_that_cannot_be_opened_fails_before_sending(
    fake: FakePangoCDP, clock: ManualClock, tmp_path: Path
) -> None:
    """A dead-letter path in a directory that does not exist is an error at the call, before
    any record is read or sent."""
    async with _client(fake, clock) as client:
        with pytest.raises(FileNotFoundError):
            await client.ingest_many("order", _records(10), source="POS",
                                     dead_letter=tmp_path / "missing" / "dead.jsonl")
    assert fake.requests == []


async def test_bad_records_are_reported_and_the_rest_sent(
    clock: ManualClock, fake: FakePangoCDP, tmp_path: Path
) -> None:
    """Records the client cannot encode are reported by position and field, written to the
    dead-letter file, and the others are sent."""
    records: list[Any] = [{"id": i} for i in range(10)]
    records[2] = {"id": 2, "price": float("nan")}
    records[6] = "not a record"
    dead = tmp_path / "dead.jsonl"
    async with _client(fake, clock) as client:
        report = await client.ingest_many("order", records, source="POS", dead_letter=dead)
    assert report.records_accepted == 8
    assert [(f.position, type(f.error)) for f in report.failures] == [
        (2, RequestValidationError), (6, RequestValidationError)]
    lines = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [line["position"] for line in lines] == [2, 6]
    assert lines[0]["error"]["field"] == "price"
    assert "entries[2].price: NaN" in lines[0]["error"]["message"]
    assert lines[1]["record"] == "not a record"


async def test_async_source_and_byte_limit(clock: ManualClock, fake: FakePangoCDP) -> None:
    """An async generator works as a source; max_batch_bytes caps every request body."""
    async def rows() -> AsyncIterator[dict[str, Any]]:
        for i in range(300):
            yield {"id": i, "pad": "x" * (i % 200)}

    async with _client(fake, clock) as client:
        report = await client.ingest_many("order", rows(), source="POS", max_batch_bytes=4_000)
    bodies = [r.size or 0 for r in fake.requests]
    assert report.records_accepted == 300
    assert max(bodies) <= 4_000
    assert len(bodies) > 300 // 50  # the byte limit forced more, smaller requests
    assert sorted(e["id"] for e in fake.accepted) == list(range(300))


async def test_memory_stays_bounded_by_the_queue(clock: ManualClock, fake: FakePangoCDP) -> None:
    """A lazy source is read only as fast as batches leave: the queue never exceeds its bound."""
    read = itertools.count()

    def rows() -> Iterator[dict[str, int]]:
        for i in range(5_000):
            next(read)
            yield {"id": i}

    async with _client(fake, clock) as client:
        seen_ahead: list[int] = []

        def progress(report: IngestReport) -> None:
            seen_ahead.append(report.records_read - report.records_accepted)

        await client.ingest_many("order", rows(), source="POS", concurrency=2,
                                 on_progress=progress)
    # at most: 2 senders' batches + 4 queued + the reader's partial batch
    assert max(seen_ahead) <= (2 + 4 + 1) * 50


async def test_stream_backpressure_and_flush_on_exit(clock: ManualClock) -> None:
    """1,000 sends from 50 tasks to a slow fake: sends wait (the bound holds), everything is
    accepted, and leaving the block flushes the last partial batch."""
    async with FakePangoCDP(rate_limits=None, latency_s=0.02) as fake:
        async with _client(fake, clock) as client:
            pending: list[int] = []
            async with client.stream("order", source="POS", concurrency=2,
                                     max_pending=100, linger=0.05) as stream:
                counter = itertools.count()

                async def producer() -> None:
                    for _ in range(20):
                        await stream.send({"id": next(counter)})
                        pending.append(stream.pending)

                await asyncio.gather(*(producer() for _ in range(50)))
            report = stream.report
    assert report.records_accepted == 1_000
    assert sorted(e["id"] for e in fake.accepted) == list(range(1_000))
    assert max(pending) <= 100
    assert max(pending) >= 90  # the bound was reached: producers were held back
    assert stream.max_batches_queued <= 4


async def test_stream_linger_and_flush(clock: ManualClock, fake: FakePangoCDP) -> None:
    """A partial batch leaves after linger; flush() waits until the records are delivered;
    a bad record raises at send()."""
    async with _client(fake, clock) as client:
        async with client.stream("order", source="POS", linger=0.01) as stream:
            await stream.send({"id": 1})
            await stream.flush()
            assert stream.report.records_accepted == 1
            assert fake.accepted == [{"id": 1}]
            with pytest.raises(RequestValidationError, match="NaN"):
                await stream.send({"id": 2, "x": float("inf")})
            await stream.send({"id": 3})
            await stream.flush()
            assert stream.report.records_accepted == 2
    assert [r.entries for r in fake.requests] == [1, 1]


async def test_pipeline_argument_errors(clock: ManualClock, fake: FakePangoCDP) -> None:
    """Bad pipeline settings are refused before anything is read or sent."""
    async with _client(fake, clock) as client:
        with pytest.raises(ValueError, match="batch_size"):
            await client.ingest_many("order", _records(1), source="POS", batch_size=51)
        with pytest.raises(ValueError, match="concurrency"):
            await client.ingest_many("order", _records(1), source="POS", concurrency=0)
        with pytest.raises(ValueError, match="max_batch_bytes"):
            await client.ingest_many("order", _records(1), source="POS", max_batch_bytes=10)
        with pytest.raises(RequestValidationError, match="source"):
            await client.ingest_many("order", _records(1), source="")
        with pytest.raises(TypeError, match="iterable"):
            await client.ingest_many("order", 5, source="POS")  # type: ignore[arg-type]
    assert fake.requests == []


async def test_token_expiry_mid_run_is_transparent(clock: ManualClock) -> None:
    """Tokens revoked mid-run: one refresh, every record still accepted once."""
    async with FakePangoCDP(rate_limits=None) as fake:
        async with _client(fake, clock) as client:

            def progress(report: IngestReport) -> None:
                if report.records_accepted == 1_000:
                    fake.expire_tokens()

            report = await client.ingest_many("order", _records(3_000), source="POS",
                                              concurrency=1, on_progress=progress)
    assert report.records_accepted == 3_000
    assert fake.auth_calls == 2
    assert sorted(e["id"] for e in fake.accepted) == list(range(3_000))
    assert [r.status for r in fake.requests].count(401) == 1


async def test_stream_cancelled_reports_unsent(clock: ManualClock) -> None:
    """A stream cancelled while a slow batch is under way: the batch finishes, batches still
    queued (and the one the reader was waiting to queue) are reported unsent; nothing is both
    and nothing read is missing."""
    async with FakePangoCDP(rate_limits=None, latency_s=0.05) as fake:
        async with _client(fake, clock) as client:
            first_batch_done = asyncio.Event()
            stream = client.stream("order", source="POS", concurrency=1, batch_size=10,
                                   linger=10.0, max_pending=1_000,
                                   on_progress=lambda report: first_batch_done.set())

            async def produce() -> None:
                async with stream:
                    for i in range(100):
                        await stream.send({"id": i})
                    await asyncio.Event().wait()  # a service that runs until cancelled

            task = asyncio.ensure_future(produce())
            await first_batch_done.wait()  # the second batch is now under way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    report = client.last_report
    assert report is not None
    assert report.cancelled
    accepted = {e["id"] for e in fake.accepted}
    unsent = {u.position for u in report.unsent}
    assert len(accepted) >= 20  # the first batch, and the one under way at the cancel
    assert unsent
    assert not accepted & unsent
    assert accepted | unsent == set(range(report.records_read))


async def test_cancel_while_isolating_reports_no_record_twice() -> None:
    """A batch is being split to find a refused entry (the server names none) when the run is
    cancelled: the halves already accepted are not also reported unsent (accepted + failed +
    unsent + in doubt == read, and nothing the fake holds is in the unsent list)."""
    async with FakePangoCDP(rate_limits=None, latency_s=0.2, name_rejected_index=False,
                            reject_entry=lambda e: "bad" if e["id"] == 37 else None) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=()) as client:
            run = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(50)], source="POS", concurrency=1,
                shutdown_timeout=0.5))
            # refused whole, then the first half is under way
            await wait_until(lambda: len(fake.requests) >= 2, "the split to start")
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            report = client.last_report
    assert report is not None
    unsent = {u.position for u in report.unsent}
    assert report.records_accepted > 0
    assert not unsent & {e["id"] for e in fake.accepted}
    # the request in flight at the cancel was answered within the timeout; no new one began
    assert report.records_unsent + report.records_in_doubt > 0
    assert (report.records_accepted + report.records_failed + len(unsent)
            + report.records_in_doubt) == report.records_read


async def test_possible_duplicates_counts_exactly_the_records_that_may_be_stored_twice(
        clock: ManualClock) -> None:
    """Three batches of 10; the second is stored and its connection dropped before the answer,
    so its retry stores it again: exactly those 10 are reported as possible duplicates."""
    async with FakePangoCDP(rate_limits=None, script=["ok", "drop-after"]) as fake:
        async with _client(fake, clock) as client:
            report = await client.ingest_many("order", _records(30), source="POS",
                                              retry=FAST_RETRY, concurrency=1, batch_size=10)
    counts = collections.Counter(e["id"] for e in fake.accepted)
    assert report.records_accepted == 30
    assert sum(c - 1 for c in counts.values()) == 10
    assert report.possible_duplicates == 10
