"""What a checkpointing caller's journal hears of a bulk run (each batch dispatched once, by
which sender; the positions accepted), what the report counts for retried batches, where the
records of a keyed source that raised end up, and how much memory a key queue keeps; on
virtual time, no sockets."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from pangocdp_async import (
    APIConnectionError,
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


class Journal:
    """A RunJournal that keeps what it hears."""

    def __init__(self) -> None:
        self.dispatched_batches: list[tuple[list[int], int]] = []
        self.accepted_positions: list[int] = []

    def dispatched(self, batch: Any, sender: int) -> None:
        self.dispatched_batches.append((list(batch.positions), sender))

    def accepted(self, positions: list[int]) -> None:
        self.accepted_positions.extend(positions)

    def failed(self, failures: list[RecordFailure]) -> None:
        pass

    def finished(self, batch: Any) -> None:
        pass


def journaled_run(source: Any, transport: InProcessTransport, keys: KeyQueue | None = None,
                  **options: Any) -> tuple[Journal, IngestReport | PipelineError]:
    """A run with the ``pangocdp`` command's hooks (a journal, optionally keys)."""
    journal = Journal()
    options.setdefault("concurrency", 1)

    async def main() -> IngestReport | PipelineError:
        async with PangoCDPClient(api_key="k", token="t", transport=transport,
                                  rate_limits=(), retry=FAST) as client:
            run = client._bulk_run("order", "POS", None, None, None,
                                   BulkOptions(retry=FAST, **options),
                                   journal=journal, keys=keys)
            try:
                return await run.run(source)
            except PipelineError as exc:
                return exc
    return journal, run_in_virtual_time(main())


def lose_every_first_answer(n: int, body: bytes) -> RawResponse | BaseException:
    """Odd requests reach the server but their answer is lost; even ones are accepted."""
    if n % 2:
        return APIConnectionError("reset after sending", maybe_sent=True)
    return InProcessTransport().respond(n, body)


def test_each_batch_is_dispatched_once_by_its_sender_and_retries_count_as_duplicates() -> None:
    """Each batch is announced to the journal once, before its first request, with the
    number of the sender (0 for the only one), however many attempts it takes; the journal
    hears every position accepted; and every record accepted on a retry after a lost answer
    counts as a possible duplicate, across batches."""
    transport = InProcessTransport(lose_every_first_answer)
    journal, report = journaled_run(iter([{"id": i} for i in range(70)]), transport)
    assert isinstance(report, IngestReport)
    assert transport.requests == 4
    assert journal.dispatched_batches == [(list(range(50)), 0), (list(range(50, 70)), 0)]
    assert journal.accepted_positions == list(range(70))
    assert report.records_accepted == 70
    assert report.possible_duplicates == 70


def test_senders_under_way_at_once_are_told_apart_in_the_journal() -> None:
    """Three senders: the batches in flight together are dispatched under three different
    sender numbers (the journal keeps one row per sender: sharing one, a batch in flight would
    be forgotten and sent again on resume), each number always the same sender's."""
    journal, report = journaled_run(iter([{"id": i} for i in range(60)]),
                                    InProcessTransport(latency=1.0),
                                    batch_size=10, concurrency=3)
    assert isinstance(report, IngestReport)
    assert report.records_accepted == 60
    senders = [sender for _, sender in journal.dispatched_batches]
    assert sorted(senders[:3]) == [0, 1, 2]
    assert sorted(senders) == [0, 0, 1, 1, 2, 2]
    assert sorted(p for positions, _ in journal.dispatched_batches for p in positions) \
        == list(range(60))


def test_a_keyed_source_that_raises_leaves_what_it_read_unsent_under_its_keys() -> None:
    """A keyed source that raises mid-batch stops the run; the records it yielded before are
    reported unsent (and a refused one failed) under the keys it pushed for them."""
    keys = KeyQueue()

    def source() -> Iterator[dict[str, float]]:
        for i, v in enumerate([1.0, math.inf]):
            keys.append(500 + 3 * i)
            yield {"id": i, "v": v}
        raise OSError("disk gone")
    _, error = journaled_run(source(), InProcessTransport(), keys)
    assert isinstance(error, PipelineError)
    assert [u.position for u in error.report.unsent] == [500]
    assert error.report.records_failed == 1
    assert error.report.records_read == 2


def test_a_key_queue_keeps_no_memory_for_keys_already_taken() -> None:
    """A long keyed run pushing and taking keys as it goes holds memory for the keys not yet
    taken, not for every key it ever saw."""
    keys = KeyQueue()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(1_000_000, 1_030_000, 100):
            for key in range(start, start + 100):
                keys.append(key)
            assert keys.take(100)[0] == start
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(keys) == 0
    assert grown < 600_000  # 30,000 keys kept would take over 1 MB


@pytest.mark.parametrize("items", [["a", "b"], [7]])
def test_plain_values_fail_with_an_error_naming_position_and_type(items: list[Any]) -> None:
    """Each plain value is failed with an error that names its position and its type."""
    failures: list[RecordFailure] = []

    async def main() -> IngestReport:
        async with PangoCDPClient(api_key="k", token="t", transport=InProcessTransport(),
                                  rate_limits=(), retry=FAST) as client:
            return await client.ingest_many("order", items, source="POS", concurrency=1,
                                            dead_letter=failures.append)
    report = run_in_virtual_time(main())
    assert report.records_accepted == 0
    assert [f.position for f in failures] == list(range(len(items)))
    for f in failures:
        assert isinstance(f.error, RequestValidationError)
        assert str(f.error) == (f"entries[{f.position}]: an entry must be a mapping or a "
                                f"pydantic model, got {type(f.record).__name__}")


def test_a_refused_record_in_a_later_batch_is_failed_at_its_position() -> None:
    """A record refused in the second batch of a plain list is failed at its place in the
    input, and the rest of that batch is sent."""
    items: list[dict[str, Any]] = [{"id": i} for i in range(53)]
    items[51]["v"] = math.nan
    transport = InProcessTransport()
    journal, report = journaled_run(items, transport)
    assert isinstance(report, IngestReport)
    assert report.records_failed == 1
    assert journal.accepted_positions == [*range(51), 52]
    assert [e["id"] for e in transport.accepted] == [*range(51), 52]
