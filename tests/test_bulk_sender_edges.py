"""One batch to its outcome, at the edges the other sender tests leave: retries counted in the
report and the client's stats, a backoff kept within the budget of a batch that starts late in
the run, the envelope check kept for the batch as read (not the rest after a named entry), and
the count of envelope refusals in a row started again by an accepted batch. On virtual time,
through the scripted in-process server of tests/test_bulk_run_sender.py."""

from __future__ import annotations

import logging
import random

import pytest

from pangocdp_async import IngestReport, RawResponse, RetryPolicy
from pangocdp_async.testing import run_in_virtual_time

from .test_bulk_run_sender import OK, Server, client_for, ingest, refuse, reply, whole


def test_retries_are_counted_in_the_report_and_the_clients_stats() -> None:
    """Two 503s, then the batch is accepted: two retries, in the report and in stats()."""
    answers = [reply(503, message="busy"), reply(503, message="busy"), OK]
    server = Server(lambda ids: answers.pop(0))

    async def main() -> tuple[IngestReport, int]:
        async with client_for(server) as client:
            report = await client.ingest_many("order", [{"id": i} for i in range(3)],
                                              source="POS", concurrency=1)
            return report, client.stats.retries
    report, stats_retries = run_in_virtual_time(main())
    assert len(server.sent) == 3
    assert report.records_accepted == 3
    assert report.retries == 2
    assert stats_retries == 2


def test_a_batch_started_late_in_the_run_still_waits_out_its_backoff(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The backoff before a retry is cut only by what is left of the batch's own budget
    (measured from its first attempt), however late on the loop's clock the batch starts."""
    monkeypatch.setattr(random.Random, "uniform", lambda self, low, high: high)
    answers = [reply(503, message="busy"), OK]
    server = Server(lambda ids: answers.pop(0))
    policy = RetryPolicy(backoff_initial_s=2.0, backoff_max_s=2.0, time_budget_s=60.0)

    async def main() -> IngestReport:
        async with client_for(server, retry=policy) as client:
            return await client.ingest_many("order", [{"id": 0}], source="POS",
                                            concurrency=1)
    report = run_in_virtual_time(main(), start=1000.0)
    assert report.records_accepted == 1
    assert server.sent_at[1] - server.sent_at[0] == pytest.approx(2.0)


def test_the_rest_after_a_named_entry_is_searched_not_taken_for_an_envelope_fault(
        caplog: pytest.LogCaptureFixture) -> None:
    """The server names entry 0; the other four are refused alike, naming none. The four are
    the rest of a batch already being searched, so they are searched by halves (each one
    tried and failed), never put down to the envelope (which would leave two unsent)."""
    def answer(ids: list[int]) -> RawResponse:
        if 0 in ids:
            return refuse(f"entries[{ids.index(0)}]: momCode is missing")
        return refuse("bad record")
    server = Server(answer)
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        report = ingest(server, 5)
    assert server.sent == [[0, 1, 2, 3, 4], [0], [1, 2, 3, 4], [1, 2], [1], [2], [3, 4],
                           [3], [4]]
    assert sorted(f.position for f in report.failures) == [0, 1, 2, 3, 4]
    assert report.unsent == []
    assert report.stopped_by is None
    assert not [r for r in caplog.records if "envelope" in r.getMessage()]
    assert whole(report)


def test_an_accepted_batch_starts_the_count_of_envelope_refusals_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """Batches of 3: refused for the envelope, accepted, refused, refused, accepted. The
    accepted batch in between breaks the run of refusals: never 3 in a row, so the run goes on
    to its end; each warning counts the refusals since the last accepted batch."""
    refused = {0, 1, 2, 6, 7, 8, 9, 10, 11}

    def answer(ids: list[int]) -> RawResponse:
        return refuse("objectType is not allowed") if refused & set(ids) else OK
    server = Server(answer)
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        report = ingest(server, 15, batch_size=3)
    counts = [r.getMessage().rsplit(": ", 1)[1] for r in caplog.records
              if r.getMessage().startswith("a batch was refused whole, for its envelope")]
    assert counts == ["1 in a row", "1 in a row", "2 in a row"]
    assert report.stopped_by is None
    assert report.records_read == 15
    assert sorted(server.stored) == [3, 4, 5, 12, 13, 14]
    assert [u.position for u in report.unsent] == [1, 7, 10]
    assert whole(report)
