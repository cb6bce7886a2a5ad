"""Where records the server did not take end up: the dead-letter sink (a file or a callable,
and what happens when it breaks) and the warnings an operator reads for records failed or in
doubt; on virtual time, no sockets."""

from __future__ import annotations

import asyncio
import decimal
import logging
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from pangocdp_async import (
    APIConnectionError,
    IngestReport,
    PangoCDPClient,
    RecordFailure,
    RequestValidationError,
    RetryPolicy,
)
from pangocdp_async.testing import InProcessTransport, run_in_virtual_time
from tests.test_bulk_cases import cancel_after

FAST = RetryPolicy(backoff_initial_s=0.01, max_attempts=2)
#: Two good records around three the client refuses (positions 1, 2 and 3).
MIXED: list[dict[str, Any]] = [{"id": 0}, {"id": 1, "v": math.nan}, {"id": 2, "v": math.inf},
                               {"id": 3, "v": -math.inf}, {"id": 4}]


def ingest(items: Any, transport: InProcessTransport | None = None,
           **kwargs: Any) -> IngestReport:
    async def main() -> IngestReport:
        async with PangoCDPClient(api_key="k", token="t", rate_limits=(), retry=FAST,
                                  transport=transport or InProcessTransport()) as client:
            return await client.ingest_many("order", items, source="POS", concurrency=1,
                                            **kwargs)
    return run_in_virtual_time(main())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == logging.WARNING]


def test_a_callable_sink_gets_each_failure() -> None:
    """The dead-letter callable is called with each failed record's RecordFailure."""
    dead: list[RecordFailure] = []
    report = ingest(MIXED, dead_letter=dead.append)
    assert [(f.position, f.record["id"]) for f in dead] == [(1, 1), (2, 2), (3, 3)]
    assert all(isinstance(f.error, RequestValidationError) for f in dead)
    assert report.dead_letter_error is None


def test_a_sink_that_fails_is_not_used_again_and_the_operator_is_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink that raises is called no more in the run: its error is in the report and a
    warning names it and says the failures stay in the report."""
    calls: list[int] = []

    def sink(failure: RecordFailure) -> None:
        calls.append(failure.position)
        if len(calls) == 1:
            raise OSError("disk full")
    caplog.set_level(logging.WARNING, logger="pangocdp_async")
    report = ingest(MIXED, dead_letter=sink)
    assert calls == [1]
    assert isinstance(report.dead_letter_error, OSError)
    assert [f.position for f in report.failures] == [1, 2, 3]
    [message] = [m for m in warnings(caplog) if "dead-letter" in m]
    assert message.startswith("the dead-letter sink failed (OSError: disk full); ")
    assert message.endswith(" stay in the report's failures and are no longer written to it")


def test_a_file_sink_writes_one_json_line_per_failure(tmp_path: Path) -> None:
    """A path gets one JSON line per failure, even for a record that is not JSON itself (its
    values are written by repr)."""
    path = tmp_path / "dead.jsonl"
    items = [{"id": 0}, {"id": 1, "amount": decimal.Decimal("1.5")}, {"id": 2, "v": math.nan}]
    report = ingest(items, dead_letter=str(path))
    assert report.dead_letter_error is None
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(d["position"], d["record"]) for d in lines] == [
        (1, {"id": 1, "amount": "Decimal('1.5')"}), (2, {"id": 2, "v": None}),
    ]
    assert lines[0]["error"]["type"] == "RequestValidationError"
    assert lines[0]["error"]["field"] == "amount"


def test_records_failed_are_logged_with_the_first_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each group of failed records is one warning naming the count, first position and
    error."""
    caplog.set_level(logging.WARNING, logger="pangocdp_async")
    ingest(MIXED)
    failed = [m for m in warnings(caplog) if "failed" in m]
    assert failed == ["3 record(s) failed (first at position 1): entries[1].v: NaN and Infinity "
                      "are not valid JSON (they would be sent as null)"]


def test_records_in_doubt_after_lost_answers_are_logged_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch whose answers were all lost is in doubt: one warning with its count, first
    position and the last error."""
    def respond(n: int, body: bytes) -> Any:
        if n == 1:
            return InProcessTransport().respond(n, body)
        return APIConnectionError("reset after sending", maybe_sent=True)
    caplog.set_level(logging.WARNING, logger="pangocdp_async")
    report = ingest([{"id": i} for i in range(70)], InProcessTransport(respond))
    assert [d.position for d in report.in_doubt] == list(range(50, 70))
    assert "20 record(s) in doubt (first at position 50): reset after sending" in warnings(caplog)


def test_records_in_flight_at_the_shutdown_timeout_are_logged_in_doubt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelled with a request under way and no time left to finish it: its records are in
    doubt, and the warning says no answer came before the run stopped."""
    caplog.set_level(logging.WARNING, logger="pangocdp_async")

    async def main() -> IngestReport:
        transport = InProcessTransport(latency=10.0)
        async with PangoCDPClient(api_key="k", token="t", rate_limits=(), retry=FAST,
                                  transport=transport) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(70)], source="POS", concurrency=1,
                shutdown_timeout=0.5))
            return await cancel_after(client, task, 15.0)
    report = run_in_virtual_time(main())
    assert [d.position for d in report.in_doubt] == list(range(50, 70))
    assert ("20 record(s) in doubt (first at position 50): no answer before the run stopped"
            in warnings(caplog))


def test_an_async_sink_is_awaited_for_each_failure() -> None:
    """A coroutine function as the dead letter is awaited: each failure arrives."""
    dead: list[int] = []

    async def sink(failure: RecordFailure) -> None:
        await asyncio.sleep(0.5)
        dead.append(failure.position)
    report = ingest(MIXED, dead_letter=sink)
    assert dead == [1, 2, 3]
    assert report.dead_letter_error is None


def test_records_in_doubt_are_the_callers_own_objects() -> None:
    """Records read one by one (a byte limit) and left in doubt are reported as the very
    dicts the caller passed, not copies."""
    def respond(n: int, body: bytes) -> Any:
        return APIConnectionError("reset after sending", maybe_sent=True)
    items = [{"id": i} for i in range(3)]
    report = ingest(items, InProcessTransport(respond), max_batch_bytes=100_000)
    assert [d.position for d in report.in_doubt] == [0, 1, 2]
    assert all(d.record is items[d.position] for d in report.in_doubt)
