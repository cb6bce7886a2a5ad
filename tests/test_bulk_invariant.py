"""Every record read ends in exactly one place: accepted, failed, unsent or in doubt.

Property-style: seeded random runs on virtual time through an in-process transport (no sockets,
so cancellation can land at any await, and hours of backoff take no real time), over every way
in (a plain iterable, an async iterable, a byte-limited iterable, a stream) and every exit path
(the end, cancellation, the source raising, the dead-letter sink raising, a sender crashing,
the shutdown timeout running out).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
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
    RecordFailure,
    RecordSourceError,
    RetryPolicy,
)
from pangocdp_async.testing import InProcessTransport, run_in_virtual_time

Ways = ["iterable", "async", "bytes", "stream"]


class Boom(Exception):
    """The record source's own error."""


def answers(seed: int, crash_at: int | None) -> Any:
    """A server with faults: 5xx, 429, connections lost before or after sending, a refused
    entry (named), and, at request ``crash_at``, a TypeError (a bug at send time)."""
    rng = random.Random(seed)

    def respond(n: int, body: bytes) -> RawResponse | BaseException:
        if n == crash_at:
            return TypeError("a bug that only shows when sending")
        ids = [e["id"] for e in orjson.loads(body)["entries"]]
        roll = rng.random()
        if any(i % 97 == 13 for i in ids):
            index = next(k for k, i in enumerate(ids) if i % 97 == 13)
            return RawResponse(400, CIMultiDict(), orjson.dumps(
                {"success": False, "errorCode": "BAD", "message": f"entries[{index}]: no"}))
        if roll < 0.05:
            return RawResponse(503, CIMultiDict(), b"{}")
        if roll < 0.08:
            return RawResponse(429, CIMultiDict({"X-Rate-Limit-Retry-After-Seconds": "0"}),
                               b'{"message": "Too many requests!"}')
        if roll < 0.10:
            return APIConnectionError("reset before sending", maybe_sent=False)
        if roll < 0.12:
            return APIConnectionError("reset after sending", maybe_sent=True)
        return RawResponse(200, CIMultiDict(), b'{"success":true}')
    return respond


def check(report: IngestReport, stored: list[dict[str, Any]]) -> None:
    """The invariant, and that each list agrees with what the "server" stored."""
    failed = [f.position for f in report.failures]
    unsent = [u.position for u in report.unsent]
    doubt = [d.position for d in report.in_doubt]
    listed = failed + unsent + doubt
    assert len(set(listed)) == len(listed), "a record is in two lists"
    assert (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read
    assert set(listed) <= set(range(report.records_read))
    accepted = {e["id"] for e in stored}
    assert len(accepted) == len(stored)  # this server stores nothing twice
    assert report.records_accepted == len(accepted)
    assert not accepted & set(listed), "a stored record is also reported failed/unsent/doubt"


def one_run(seed: int, way: str, *, cancel_at: float | None = None, source_fails: bool = False,
            sink_fails: bool = False, crash_at: int | None = None,
            shutdown_timeout: float = 30.0) -> tuple[IngestReport, BaseException | None]:
    """One seeded run; checks the invariant against what the transport stored."""
    rng = random.Random(seed)
    n = rng.randrange(50, 400)
    fail_at = rng.randrange(1, n) if source_fails else None
    transport = InProcessTransport(answers(seed, crash_at), latency=rng.uniform(0.01, 0.3))

    def plain() -> Iterator[dict[str, int]]:
        for i in range(n):
            if i == fail_at:
                raise Boom("source broke")
            yield {"id": i}

    async def lazy() -> AsyncIterator[dict[str, int]]:
        for record in plain():
            await asyncio.sleep(0.001)
            yield record

    def sink(failure: RecordFailure) -> None:
        if sink_fails:
            raise OSError("disk full")

    async def main() -> tuple[IngestReport, BaseException | None]:
        client = PangoCDPClient(api_key="k", token="t", transport=transport, rate_limits=(),
                                retry=RetryPolicy(backoff_initial_s=0.05, max_attempts=4))
        async with client:
            options: dict[str, Any] = {"concurrency": rng.randrange(1, 6),
                                       "batch_size": rng.randrange(1, 51),
                                       "dead_letter": sink,
                                       "shutdown_timeout": shutdown_timeout}

            async def go() -> IngestReport:
                if way == "stream":
                    async with client.stream("order", source="POS", linger=0.05,
                                             **options) as stream:
                        for record in plain():
                            await stream.send(record)
                    return stream.report
                records: Any = lazy() if way == "async" else plain()
                if way == "bytes":
                    options["max_batch_bytes"] = rng.randrange(200, 2_000)
                return await client.ingest_many("order", records, source="POS", **options)

            task = asyncio.ensure_future(go())
            if cancel_at is not None:
                asyncio.get_running_loop().call_later(cancel_at, task.cancel)
            error: BaseException | None = None
            try:
                await task
            except (asyncio.CancelledError, PipelineError, Boom) as exc:
                error = exc
            report = client.last_report
            assert report is not None
            return report, error
    report, error = run_in_virtual_time(main())
    check(report, transport.accepted)
    return report, error


@pytest.mark.parametrize("way", Ways)
@pytest.mark.parametrize("seed", range(6))
def test_runs_to_the_end(way: str, seed: int) -> None:
    """Faults of every kind, run to the end: nothing unsent, the invariant holds."""
    report, error = one_run(seed, way)
    assert error is None
    assert not report.unsent
    assert report.records_read > 0


@pytest.mark.parametrize("way", Ways)
@pytest.mark.parametrize("seed", range(8))
def test_cancelled_at_a_random_moment(way: str, seed: int) -> None:
    """Cancelled at a random moment (any await: a read, a slot, a request, a backoff, the
    linger): every record read is in exactly one place."""
    cancel_at = random.Random(1000 + seed).uniform(0.0, 2.0)
    report, error = one_run(seed, way, cancel_at=cancel_at)
    assert isinstance(error, asyncio.CancelledError) or report.complete


@pytest.mark.parametrize("way", ["iterable", "async", "bytes"])
@pytest.mark.parametrize("seed", range(4))
def test_the_source_raises(way: str, seed: int) -> None:
    """The record source raises: RecordSourceError with a report where every record read is
    in one place (before: records of the batch being read were lost)."""
    _, error = one_run(seed, way, source_fails=True)
    assert isinstance(error, RecordSourceError)
    assert isinstance(error.__cause__, Boom)


@pytest.mark.parametrize("way", Ways)
@pytest.mark.parametrize("seed", range(3))
def test_the_dead_letter_sink_raises(way: str, seed: int) -> None:
    """The dead-letter sink raises: the run goes on, failures stay in the report, and the
    sink's error is reported (never as the record source's)."""
    report, error = one_run(seed, way, sink_fails=True)
    assert error is None
    assert report.failures
    assert isinstance(report.dead_letter_error, OSError)


@pytest.mark.parametrize("way", Ways)
@pytest.mark.parametrize("seed", range(3))
def test_a_sender_crashes(way: str, seed: int) -> None:
    """A sender crashes at its 3rd request: PipelineError, and its batch is in doubt (its
    request was under way), not missing (before: 120 read, 0 accounted for)."""
    report, error = one_run(seed, way, crash_at=3)
    assert isinstance(error, PipelineError)
    assert report.in_doubt


@pytest.mark.parametrize("way", Ways)
@pytest.mark.parametrize("seed", range(3))
def test_the_shutdown_timeout_runs_out(way: str, seed: int) -> None:
    """Cancelled with requests under way and no time to finish them: those records are in
    doubt, never "unsent" (the server may have stored them)."""
    report, error = one_run(seed, way, cancel_at=0.5, shutdown_timeout=0.0)
    assert isinstance(error, asyncio.CancelledError) or report.complete
