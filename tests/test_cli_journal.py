"""The job journal on its own: what is durable when, what a crash leaves, and the ranges
arithmetic beneath. A "crash" here is a second connection reading the file while the first
still holds uncommitted work (what a kill -9 would leave on disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pangocdp_async import APIStatusError
from pangocdp_async._batching import Batch
from pangocdp_async._results import InDoubtRecord, IngestReport, RecordFailure
from pangocdp_async.cli._inputs import BadRecord, InputFile, key_of
from pangocdp_async.cli._journal import JobMismatch, Journal
from pangocdp_async.cli._ranges import merge, runs_of, subtract

FILES = [InputFile(0, "a.jsonl", "jsonl", False), InputFile(1, "b.json", "json", False)]
SETTINGS = {"object_type": "order", "source": "POS"}
INPUTS = [{"path": "/x/a.jsonl", "size": 10}, {"path": "/x/b.json", "size": 20}]


def batch(lo: int, hi: int) -> Batch:
    return Batch(list(range(lo, hi + 1)), [{} for _ in range(lo, hi + 1)])


def opened(path: Path) -> Journal:
    journal = Journal(path)
    journal.bind(SETTINGS, INPUTS, FILES, restart=False)
    journal.begin_run()
    return journal


def on_disk(path: Path) -> tuple[int, int, int]:
    """(accepted, failed, unconfirmed) as a process reading the file now would see them."""
    other = Journal(path)
    try:
        state = other.state()
        return state.accepted, state.failed, state.unconfirmed
    finally:
        other.close()


def test_ranges_helpers() -> None:
    assert runs_of([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 8), (10, 10)]
    assert runs_of([]) == []
    assert merge([(5, 6), (1, 2), (3, 3), (9, 9), (4, 4)]) == [(1, 6), (9, 9)]
    assert merge([(5, 6), (1, 2)]) == [(1, 2), (5, 6)]  # 3 and 4 are missing
    assert subtract([(1, 10), (20, 25)], [(3, 4), (8, 21)]) == [(1, 2), (5, 7), (22, 25)]
    assert subtract([(1, 5)], []) == [(1, 5)]
    assert subtract([(1, 5)], [(0, 9)]) == []


def test_a_dispatch_is_durable_before_the_request(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    journal.dispatched(batch(1, 50), sender=0)
    journal.dispatched(batch(51, 100), sender=1)
    assert on_disk(path) == (0, 0, 100)  # both in flight, as a crash would leave them
    journal.close()


async def test_an_ack_rides_with_the_senders_next_dispatch(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    journal.dispatched(batch(1, 50), sender=0)
    journal.accepted(list(range(1, 51)))
    journal.finished(batch(1, 50))
    # Not yet durable (no dispatch, no turn of the loop): a crash now re-sends it.
    assert on_disk(path) == (0, 0, 50)
    journal.dispatched(batch(51, 100), sender=0)
    assert on_disk(path) == (50, 0, 50)  # acknowledged, and the next one in flight
    journal.close()


async def test_an_ack_is_durable_when_the_loop_turns(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    journal.dispatched(batch(1, 50), sender=3)
    journal.accepted(list(range(1, 51)))
    journal.finished(batch(1, 50))
    assert on_disk(path) == (0, 0, 50)
    await asyncio.sleep(0)  # one turn
    assert on_disk(path) == (50, 0, 0)
    journal.close()


def test_partial_acks_of_a_split_batch(tmp_path: Path) -> None:
    """A batch split by the search for a refused entry settles part by part: the parts are
    written when it is finished; its refused entry is failed, with the server's words."""
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    whole = batch(1, 10)
    journal.dispatched(whole, sender=0)
    journal.accepted([1, 2, 3, 4, 5])
    journal.accepted([7, 8, 9, 10])
    error = APIStatusError(status=400, message="entries[1]: Missing momCode")
    journal.failed([RecordFailure(6, {"orderId": "X"}, error)])
    journal.finished(whole)
    journal.commit()
    assert on_disk(path) == (9, 1, 0)
    failures = journal.failures()
    assert failures[0]["where"] == "a.jsonl:6"
    assert failures[0]["status"] == 400
    assert "Missing momCode" in failures[0]["message"]
    assert failures[0]["record"] == {"orderId": "X"}
    journal.close()


def test_failures_name_file_and_line_or_item(tmp_path: Path) -> None:
    from pangocdp_async import RequestValidationError

    journal = opened(tmp_path / "job.sqlite")
    key = key_of(1, 7)
    journal.failed([
        RecordFailure(key_of(0, 3), BadRecord("a.jsonl", 3, "not valid JSON", "{x"),
                      RequestValidationError("entries[x]: not a mapping")),
        RecordFailure(key, {"a": 1}, RequestValidationError(f"entries[{key}].a: too big")),
    ])
    journal.commit()
    found = journal.failures()
    assert [(f["where"], f["message"]) for f in found] == [
        ("a.jsonl:3", "not valid JSON"), ("b.json:item 7", "b.json:item 7.a: too big")]
    assert found[0]["record"] == "{x"
    journal.close()


def test_end_run_keeps_in_doubt_and_earlier_leftovers_unconfirmed(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    journal.dispatched(batch(1, 50), sender=0)
    journal.dispatched(batch(51, 60), sender=1)
    # the run stops: 1-50 are in doubt, 51-60 never got a request through (unsent)
    report = IngestReport()
    report.in_doubt.extend(InDoubtRecord(k, {}) for k in range(1, 51))
    journal.end_run(report, "interrupted")
    journal.close()
    assert on_disk(path) == (0, 0, 50)  # 51-60 were not sent: not counted as maybe-sent
    again = Journal(path)
    again.bind(SETTINGS, INPUTS, FILES, restart=False)
    again.begin_run()  # the leftovers move out of the senders' rows
    again.dispatched(batch(1, 50), sender=0)  # overwriting sender 0's row loses nothing
    assert again.unconfirmed_ranges() == [(1, 50)]
    again.accepted(list(range(1, 51)))
    again.finished(batch(1, 50))
    again.commit()
    assert again.unconfirmed_ranges() == []
    again.close()


def test_bind_refuses_another_job_and_restart_forgets(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    journal = opened(path)
    journal.dispatched(batch(1, 5), sender=0)
    journal.accepted([1, 2, 3, 4, 5])
    journal.finished(batch(1, 5))
    journal.commit()
    journal.close()
    other = Journal(path)
    with pytest.raises(JobMismatch, match="source was 'POS', now 'WEB'"):
        other.bind({**SETTINGS, "source": "WEB"}, INPUTS, FILES, restart=False)
    with pytest.raises(JobMismatch, match=r"a\.jsonl changed \(size 10 -> 11 bytes\)"):
        other.bind(SETTINGS, [{"path": "/x/a.jsonl", "size": 11}, INPUTS[1]], FILES,
                   restart=False)
    with pytest.raises(JobMismatch, match="it had 2 input file"):
        other.bind(SETTINGS, INPUTS[:1], FILES[:1], restart=False)
    assert other.bind(SETTINGS, INPUTS, FILES, restart=False) is True  # resumes
    assert other.bind({**SETTINGS, "source": "WEB"}, INPUTS, FILES, restart=True) is False
    assert other.state().accepted == 0
    other.close()


def test_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "job.sqlite"
    path.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(JobMismatch, match="not a pangocdp job journal"):
        Journal(path)


def test_a_write_that_fails_stops_the_next_dispatch(tmp_path: Path) -> None:
    journal = opened(tmp_path / "job.sqlite")
    from pangocdp_async.cli._journal import JournalWriteError

    journal.error = OSError("disk full")
    with pytest.raises(JournalWriteError, match=r"cannot write the job journal .*: disk full"):
        journal.dispatched(batch(1, 2), sender=0)
    journal.close()


def test_an_outage_stops_after_five_failed_batches_in_a_row(tmp_path: Path) -> None:
    from pangocdp_async import ServerError
    from pangocdp_async.cli._journal import OUTAGE_BATCHES, ServerFailing

    journal = opened(tmp_path / "job.sqlite")
    down = ServerError(status=503, message="down")
    refused = APIStatusError(status=400, message="entries[0]: bad")

    def fail(key: int, error: APIStatusError) -> None:
        journal.failed([RecordFailure(key, {}, error)])

    for key in range(1, OUTAGE_BATCHES):
        fail(key, down)
    journal.accepted([100])  # an accepted batch: not an outage after all
    for key in range(10, 10 + OUTAGE_BATCHES - 1):
        fail(key, down)
    fail(30, refused)  # a record refused for itself says the server is up
    for key in range(40, 40 + OUTAGE_BATCHES - 1):
        fail(key, down)
    with pytest.raises(ServerFailing, match="5 batches in a row"):
        fail(99, down)
    journal.commit()
    assert journal.state().to_retry == 3 * (OUTAGE_BATCHES - 1) + 1  # written before raising
    assert journal.state().failed == 1  # only the refused record is settled
    journal.close()
