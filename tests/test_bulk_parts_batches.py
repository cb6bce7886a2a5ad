"""How a bulk run cuts records into requests (by count and by bytes), which positions its
errors name, and what it does with records it cannot send; on virtual time, no sockets."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from pangocdp_async import (
    IngestReport,
    PangoCDPClient,
    PipelineError,
    RawResponse,
    RecordFailure,
    RequestValidationError,
    RetryPolicy,
)
from pangocdp_async._bulk import BulkOptions, KeyQueue
from pangocdp_async.testing import InProcessTransport, run_in_virtual_time

FAST = RetryPolicy(backoff_initial_s=0.01, max_attempts=2)
#: The body of a request with no entries: what every request costs beyond its entries.
OVERHEAD = len(orjson.dumps({"objectType": "order", "source": "POS", "entries": []}))


class Recorder(InProcessTransport):
    """Accepts everything and keeps each request's body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        inner = self.respond

        def respond(n: int, body: bytes) -> RawResponse | BaseException:
            self.bodies.append(body)
            return inner(n, body)
        self.respond = respond

    def sizes(self) -> list[int]:
        """Entries per request, in order."""
        return [len(orjson.loads(b)["entries"]) for b in self.bodies]


def records(n: int) -> list[dict[str, Any]]:
    """``n`` records that encode to the same number of bytes each."""
    return [{"id": 10 + i, "pad": "p" * 20} for i in range(n)]


ENTRY = len(orjson.dumps(records(1)[0]))


async def lazily(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def ingest(transport: InProcessTransport, items: list[Any], *, lazy: bool = False,
           **kwargs: Any) -> IngestReport:
    async def main() -> IngestReport:
        async with PangoCDPClient(api_key="k", token="t", transport=transport, rate_limits=(),
                                  retry=FAST) as client:
            source: Any = lazily(items) if lazy else items
            return await client.ingest_many("order", source, source="POS", concurrency=1,
                                            **kwargs)
    return run_in_virtual_time(main())


def body_of(k: int) -> int:
    """The bytes of a request body holding ``k`` of :func:`records`."""
    return OVERHEAD + k * ENTRY + (k - 1)


@pytest.mark.parametrize(("limit", "sizes"), [
    (body_of(1), [1] * 7),  # one entry fills a request exactly: sent, not refused
    (body_of(2) - 1, [1] * 7),
    (body_of(3), [3, 3, 1]),  # three fit exactly
    (body_of(4) - 1, [3, 3, 1]),  # a fourth would be one byte over
    (body_of(7), [7]),
])
def test_max_batch_bytes_fills_requests_up_to_the_byte(limit: int, sizes: list[int]) -> None:
    """Requests are filled up to max_batch_bytes exactly (commas between entries counted),
    never over it, and every record is sent once."""
    transport = Recorder()
    report = ingest(transport, records(7), max_batch_bytes=limit)
    assert transport.sizes() == sizes
    assert max(len(b) for b in transport.bodies) <= limit
    assert report.records_accepted == 7
    assert [e["id"] for e in transport.accepted] == list(range(10, 17))


@pytest.mark.parametrize("options", [
    {"max_batch_bytes": 100_000}, {"lazy": True},
])
def test_batch_size_caps_requests_read_record_by_record(options: dict[str, Any]) -> None:
    """Read one record at a time (a byte limit, an async iterable), requests still hold at
    most batch_size entries."""
    transport = Recorder()
    report = ingest(transport, records(7), batch_size=3, **options)
    assert transport.sizes() == [3, 3, 1]
    assert report.records_accepted == 7


def test_errors_read_record_by_record_name_the_position() -> None:
    """Records refused before sending, in a byte-limited run, are failed with errors naming
    their position in the input (and the entry's size against the limit)."""
    big = {"id": 3, "blob": "x" * 1_500}
    size = len(orjson.dumps(big))
    transport = Recorder()
    items = [*records(2), {"id": 2, "price": math.nan}, big, *records(1)]
    report = ingest(transport, items, max_batch_bytes=1_000)
    assert [(f.position, f.error.index) for f in report.failures   # type: ignore[attr-defined]
            ] == [(2, 2), (3, 3)]
    first, second = (str(f.error) for f in report.failures)
    assert first.startswith("entries[2].price: NaN and Infinity")
    assert second == (f"entries[3]: the entry alone is {size:,} bytes encoded, more than "
                      "max_batch_bytes=1,000 allows")
    assert report.records_accepted == 3


class Journal:
    """A RunJournal that keeps the positions it hears of."""

    def __init__(self) -> None:
        self.accepted_positions: list[int] = []
        self.failed_positions: list[int] = []

    def dispatched(self, batch: Any, sender: int) -> None:
        pass

    def accepted(self, positions: list[int]) -> None:
        self.accepted_positions.extend(positions)

    def failed(self, failures: list[RecordFailure]) -> None:
        self.failed_positions.extend(f.position for f in failures)

    def finished(self, batch: Any) -> None:
        pass


def keyed_run(source: Iterator[Any] | AsyncIterator[Any], keys: KeyQueue,
              **options: Any) -> tuple[Journal, IngestReport | BaseException]:
    """A run with the ``pangocdp`` command's hooks: records keyed by ``keys``."""
    journal = Journal()

    async def main() -> IngestReport | BaseException:
        async with PangoCDPClient(api_key="k", token="t", transport=InProcessTransport(),
                                  rate_limits=(), retry=FAST) as client:
            run = client._bulk_run("order", "POS", None, None, None,
                                   BulkOptions(retry=FAST, concurrency=1, **options),
                                   journal=journal, keys=keys)
            try:
                return await run.run(source)
            except PipelineError as exc:
                return exc
    return journal, run_in_virtual_time(main())


@pytest.mark.parametrize("options", [
    {}, {"max_batch_bytes": 1_000, "batch_size": 2}, {"linger": 1.0},
])
def test_records_keyed_by_the_source_are_reported_by_key(options: dict[str, Any]) -> None:
    """A source that pushes each record's key (as the command does: a file and line) has
    its records reported by those keys, however the run reads them."""
    keys = KeyQueue()

    def source() -> Iterator[dict[str, int]]:
        for i in range(5):
            keys.append(1_000 + 7 * i)
            yield {"id": i}
    journal, report = keyed_run(source(), keys, **options)
    assert isinstance(report, IngestReport)
    assert journal.accepted_positions == [1_000 + 7 * i for i in range(5)]


def test_a_source_that_pushes_too_few_keys_stops_the_run_saying_so() -> None:
    """A keyed source that forgets its keys stops the run with an error that says how many
    keys it pushed for how many records."""
    keys = KeyQueue()

    def source() -> Iterator[dict[str, int]]:
        keys.append(5)
        yield from ({"id": i} for i in range(3))
    _, error = keyed_run(source(), keys)
    assert isinstance(error, PipelineError)
    assert "(RuntimeError: the source pushed 1 key(s) for 3 record(s))" in str(error)


def test_a_key_queue_gives_keys_oldest_first_across_compactions() -> None:
    """Keys come out in the order pushed, however many were taken before."""
    keys = KeyQueue()
    taken: list[int] = []
    for i in range(10_000):
        keys.append(i)
        if i % 3 == 2:
            taken.extend(keys.take(3))
    assert taken == list(range(9_999))
    assert len(keys) == 1
    assert keys.take_one() == 9_999
    with pytest.raises(RuntimeError, match=r"^the source pushed 0 key\(s\) for 1 record\(s\)$"):
        keys.take(1)


def test_a_record_that_cannot_be_sent_is_refused_with_its_error() -> None:
    """A bad record read record by record is failed (not lost) with a RequestValidationError."""
    report = ingest(Recorder(), [{"id": 0}, {"id": 1, "v": math.inf}], lazy=True)
    [failure] = report.failures
    assert isinstance(failure.error, RequestValidationError)
    assert failure.error.field == "v"


@pytest.mark.parametrize(("items", "refused"), [
    ([{"id": 0, "v": math.nan}], [0]),
    ([{"id": 0, "v": None}, {"id": 1, "v": [math.inf]}], [1]),
    ([{"id": 0, "v": None}, {"id": 1, "v": None}], []),
])
def test_non_finite_numbers_are_refused_whatever_else_the_batch_holds(
    items: list[dict[str, Any]], refused: list[int]
) -> None:
    """NaN and Infinity are refused (never sent as null), whether every record of the batch
    has one or some; real nulls are sent as they are."""
    transport = Recorder()
    report = ingest(transport, items)
    assert [f.position for f in report.failures] == refused
    assert [e["id"] for e in transport.accepted] == [
        r["id"] for i, r in enumerate(items) if i not in refused]
    assert all(e["v"] is None for e in transport.accepted)


def test_max_batch_bytes_must_exceed_the_envelope() -> None:
    """A byte limit that leaves no room for one entry is refused before anything is read,
    saying what it must exceed; one byte more is taken."""
    with pytest.raises(ValueError, match=r"^max_batch_bytes must exceed") as info:
        ingest(Recorder(), records(2), max_batch_bytes=OVERHEAD)
    assert str(info.value) == (f"max_batch_bytes must exceed the envelope's {OVERHEAD} bytes, "
                               f"got {OVERHEAD}")
    report = ingest(Recorder(), records(2), max_batch_bytes=OVERHEAD + 1)
    assert [f.position for f in report.failures] == [0, 1]  # each too big alone


@pytest.mark.parametrize("options", [
    {}, {"max_batch_bytes": 1_000, "batch_size": 2}, {"linger": 1.0},
])
def test_a_refused_record_in_a_keyed_run_is_reported_by_its_key(options: dict[str, Any]) -> None:
    """A record refused before sending (Infinity) is failed under its own key, whether the
    run reads whole batches or record by record (before: the record's read count)."""
    keys = KeyQueue()

    def source() -> Iterator[dict[str, float]]:
        for i, v in enumerate([1.0, float("inf"), 3.0]):
            keys.append(100 + i)
            yield {"id": i, "v": v}
    journal, report = keyed_run(source(), keys, **options)
    assert isinstance(report, IngestReport)
    assert journal.failed_positions == [101]  # (with a journal, failures go only there)
    assert report.records_failed == 1
    assert journal.accepted_positions == [100, 102]
