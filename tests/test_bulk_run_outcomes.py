"""Where each record of a bulk run ends when the quota, 429s or the credentials stop a batch: a
retry's wait for a quota slot within the batch's time budget, 429s counted against
max_rate_limited, the credentials refused while a batch is being split, the journal's finished
batches, and the run's errors about its records argument. On virtual time, through the
scripted server of test_bulk_run_sender."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pangocdp_async import (
    APIConnectionError,
    AuthenticationError,
    IngestReport,
    Margin,
    QuotaScheduler,
    QuotaWaitError,
    RateLimit,
    RateLimitedError,
    RawResponse,
    RecordFailure,
    RetryPolicy,
)
from pangocdp_async._bulk import BulkOptions
from pangocdp_async.testing import run_in_virtual_time
from tests.test_bulk_cases import cancel_after
from tests.test_bulk_run_sender import OK, Answer, Server, client_for, ingest, refuse, reply, whole


def scripted(script: dict[tuple[int, ...], list[RawResponse]]) -> Answer:
    """Each request gets the next answer scripted for its ids (200 once those run out)."""
    script = {ids: list(answers) for ids, answers in script.items()}  # (the table stays whole)

    def answer(ids: list[int]) -> RawResponse:
        queue = script.get(tuple(ids), [])
        return queue.pop(0) if queue else OK
    return answer


def first_call_takes(seconds: dict[tuple[int, ...], float]) -> Callable[[list[int]], float]:
    """The first request for each of these ids takes that long to answer; the rest, no time."""
    seconds = dict(seconds)  # (the table stays whole: a test may run twice in one process)

    def delay(ids: list[int]) -> float:
        return seconds.pop(tuple(ids), 0.0)
    return delay


def paced(server: Server, n: int, *, window: float, budget: float) -> IngestReport:
    """``n`` records, one per batch, one sender, paced at one request per ``window`` seconds
    after the last answer; retries at once (no backoff), within ``budget`` seconds of when
    the batch was taken up."""
    retry = RetryPolicy(backoff_initial_s=0.0, time_budget_s=budget, max_attempts=3)

    async def main() -> IngestReport:
        # (no margin: a request counts from its start until its answer, plus the window)
        limiter = QuotaScheduler((RateLimit(1, window),), margin=Margin(0.0, 0.0))
        async with client_for(server, limiter=limiter, retry=retry) as client:
            return await client.ingest_many("order", [{"id": i} for i in range(n)],
                                            source="POS", batch_size=1, concurrency=1)
    return run_in_virtual_time(main())


def test_a_first_attempt_waits_for_pacing_longer_than_the_budget() -> None:
    """The time budget bounds retries only: a batch's first attempt waits for its quota slot
    as long as pacing needs (10 s here, against a budget of 5 s)."""
    server = Server()
    report = paced(server, 2, window=10.0, budget=5.0)
    assert server.sent_at == pytest.approx([0.0, 10.0])
    assert report.records_accepted == 2


# (n, window, budget, script, first-call delays, request times, accepted, failed, in doubt)
RETRY_WAITS: dict[str, tuple[int, float, float, dict[tuple[int, ...], list[RawResponse]],
                             dict[tuple[int, ...], float], list[float], int, list[int],
                             list[int]]] = {
    "a retry waits for a slot within the budget": (
        1, 0.4, 0.5, {(0,): [reply(500)]}, {}, [0.0, 0.4], 1, [], []),
    "a retry whose slot lies past the budget fails, with nothing sent": (
        1, 0.8, 0.5, {(0,): [reply(500)]}, {}, [0.0], 0, [0], []),
    "a retry past the budget after a 504 leaves the batch in doubt": (
        1, 0.8, 0.5, {(0,): [reply(504)]}, {}, [0.0], 0, [], [0]),
    "the budget left for a retry counts the first attempt's time": (
        1, 1.4, 1.0, {(0,): [reply(500)]}, {(0,): 0.5}, [0.0], 0, [0], []),
    "the budget counts from the batch's own first attempt, not the run's start": (
        2, 0.4, 1.0, {(1,): [reply(500)]}, {(0,): 2.0}, [0.0, 2.4, 2.8], 2, [], []),
}


@pytest.mark.parametrize("case", list(RETRY_WAITS))
def test_a_retry_waits_for_its_quota_slot_within_the_budget_left(case: str) -> None:
    """A retry waits for its quota slot only within what is left of the batch's time budget
    (counted from when the batch was taken up, its first wait for a slot included); past it
    the batch fails with QuotaWaitError at once, or is in doubt if an attempt may have been
    stored."""
    n, window, budget, script, delays, times, accepted, failed, in_doubt = RETRY_WAITS[case]
    server = Server(scripted(script), delay=first_call_takes(delays))
    report = paced(server, n, window=window, budget=budget)
    assert server.sent_at == pytest.approx(times)
    assert report.records_accepted == accepted
    assert [f.position for f in report.failures] == failed
    assert [d.position for d in report.in_doubt] == in_doubt
    assert all(isinstance(f.error, QuotaWaitError) for f in report.failures)
    assert all(isinstance(d.error, QuotaWaitError) for d in report.in_doubt)
    assert whole(report)


@pytest.mark.parametrize(("max_rate_limited", "refusals", "requests", "accepted"), [
    (1, 1, 2, 1),  # one 429 is allowed: retried after the pause, then accepted
    (2, 9, 3, 0),  # the third 429 is one too many: failed
])
def test_429s_are_counted_against_max_rate_limited(max_rate_limited: int, refusals: int,
                                                   requests: int, accepted: int) -> None:
    """A batch answered 429 is retried after the pause up to max_rate_limited times; one more
    429 fails it with RateLimitedError. Every 429 is counted in the report."""
    server = Server(scripted({(0,): [reply(429, message="slow down")] * refusals}))
    report = ingest(server, 1, retry=RetryPolicy(max_rate_limited=max_rate_limited,
                                                 time_budget_s=60.0))
    assert len(server.sent) == requests
    assert report.records_accepted == accepted
    assert report.rate_limited == min(refusals, requests)
    if not accepted:
        [failure] = report.failures
        assert isinstance(failure.error, RateLimitedError)
    assert whole(report)


def token_refused_for(*batches: tuple[int, ...]) -> Answer:
    """401 for a request holding exactly these ids; 413 for a 4-entry batch holding 8; 400
    for any other 4-entry batch (naming no entry); otherwise 200."""
    def answer(ids: list[int]) -> RawResponse:
        if tuple(ids) in batches:
            return reply(401, message="token refused")
        if len(ids) == 4:
            return reply(413, message="too large") if 8 in ids else refuse("bad")
        return OK
    return answer


# (records, refused ids, requests, failed, unsent)
REFUSED: dict[str, tuple[list[int], tuple[int, ...], list[list[int]], list[int], list[int]]] = {
    "a whole batch": ([0, 1, 2, 3, 4, 5, 6, 7], (0, 1, 2, 3),
                      [[0, 1, 2, 3]], [0, 1, 2, 3], []),
    "the left half of a refused batch": ([0, 1, 2, 3], (0, 1),
                                         [[0, 1, 2, 3], [0, 1]], [0, 1], [2, 3]),
    "the right half of a refused batch": ([0, 1, 2, 3], (3,),
                                          [[0, 1, 2, 3], [0, 1], [2], [3]], [3], []),
    "the left half of a batch too large": ([8, 9, 10, 11], (8, 9),
                                           [[8, 9, 10, 11], [8, 9]], [0, 1], [2, 3]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_token_refused_stops_the_run_with_every_record_in_place(case: str) -> None:
    """The server refuses the token (401, no refresh possible), also while a batch is being
    split: the run stops; the records of that request fail with the 401, the rest of the batch
    (never sent on its own) is unsent, and the report is whole."""
    ids, refused, requests, failed, unsent = REFUSED[case]
    server = Server(token_refused_for(refused))

    async def main() -> IngestReport:
        async with client_for(server) as client:
            return await client.ingest_many("order", [{"id": i} for i in ids], source="POS",
                                            batch_size=4, concurrency=1)
    report = run_in_virtual_time(main())
    assert server.sent == requests
    assert isinstance(report.stopped_by, AuthenticationError)
    assert [f.position for f in report.failures] == failed
    assert all(f.error is report.stopped_by for f in report.failures)
    assert [u.position for u in report.unsent] == unsent
    assert report.records_read == 4
    assert whole(report)


class Journal:
    """A RunJournal that keeps the positions of each batch finished."""

    def __init__(self) -> None:
        self.finished_batches: list[list[int]] = []

    def dispatched(self, batch: Any, sender: int) -> None:
        pass

    def accepted(self, positions: list[int]) -> None:
        pass

    def failed(self, failures: list[RecordFailure]) -> None:
        pass

    def finished(self, batch: Any) -> None:
        self.finished_batches.append(list(batch.positions))


@pytest.mark.parametrize(("answer", "finished"), [
    (lambda ids: OK, [[0, 1], [2, 3], [4]]),
    (token_refused_for((2, 3)), [[0, 1], [2, 3]]),
])
def test_the_journal_hears_each_batch_finished(answer: Answer,
                                               finished: list[list[int]]) -> None:
    """A checkpointing journal hears each batch finished, in turn, with its records; also the
    batch whose token was refused, which stopped the run."""
    journal = Journal()

    async def main() -> IngestReport:
        async with client_for(Server(answer)) as client:
            run = client._bulk_run("order", "POS", None, None, None,
                                   BulkOptions(retry=client.retry, concurrency=1, batch_size=2),
                                   journal=journal)
            return await run.run([{"id": i} for i in range(5)])
    run_in_virtual_time(main())
    assert journal.finished_batches == finished


@pytest.mark.parametrize(("records", "message"), [
    (asyncio.Queue(), "records must be an iterable or async iterable; an asyncio.Queue has no "
                      "end. Use client.stream() to send records one at a time"),
    (42, "records must be an iterable or async iterable of mappings, got int"),
    ("abc", "records must be an iterable or async iterable of mappings, got str"),
    ({"id": 1}, "records must be an iterable or async iterable of mappings, got dict"),
])
def test_records_that_are_not_a_finite_iterable_are_refused(records: Any,
                                                            message: str) -> None:
    """ingest_many refuses a queue (it has no end) and anything not an iterable of mappings
    with a TypeError naming what it got, before any request."""
    server = Server()

    async def main() -> None:
        async with client_for(server) as client:
            await client.ingest_many("order", records, source="POS")
    with pytest.raises(TypeError) as info:
        run_in_virtual_time(main())
    assert str(info.value) == message
    assert server.sent == []


def test_a_half_past_the_budget_in_doubt_is_reported_once_when_cancelled() -> None:
    """A batch too large is split; its left half is answered 504 and its retry's slot lies
    past the budget (in doubt, with QuotaWaitError); the run is cancelled while the right half
    is in flight: each record is in doubt once."""
    def answer(ids: list[int]) -> RawResponse:
        return reply(413) if len(ids) == 2 else reply(504) if ids == [0] else OK
    server = Server(answer, delay=lambda ids: 10.0 if ids == [1] else 0.0)
    retry = RetryPolicy(backoff_initial_s=0.0, time_budget_s=0.6)

    async def main() -> IngestReport:
        limiter = QuotaScheduler((RateLimit(1, 0.4),), margin=Margin(0.0, 0.0))
        async with client_for(server, limiter=limiter, retry=retry) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": 0}, {"id": 1}], source="POS", concurrency=1,
                shutdown_timeout=0.0))
            return await cancel_after(client, task, 2.0)
    report = run_in_virtual_time(main())
    assert server.sent == [[0, 1], [0], [1]]
    assert [d.position for d in report.in_doubt] == [0, 1]
    assert isinstance(report.in_doubt[0].error, QuotaWaitError)
    assert whole(report)


def test_the_token_refused_after_a_lost_answer_leaves_the_rest_in_doubt() -> None:
    """A batch's first request gets no answer (the server may hold it); the retry is refused
    with 400 and its left half with 401: the run stops, and the right half (in that first
    request, never answered) is in doubt, not unsent; the journal does not hear the batch
    finished."""
    lost = APIConnectionError("reset", maybe_sent=True)
    answers: dict[tuple[int, ...], list[RawResponse | BaseException]] = {
        (0, 1, 2, 3): [lost, refuse("bad")], (0, 1): [reply(401, message="token refused")]}

    def answer(ids: list[int]) -> RawResponse | BaseException:
        queue = answers.get(tuple(ids), [])
        return queue.pop(0) if queue else OK
    server = Server(answer)
    journal = Journal()

    async def main() -> IngestReport:
        async with client_for(server) as client:
            run = client._bulk_run("order", "POS", None, None, None,
                                   BulkOptions(retry=client.retry, concurrency=1, batch_size=4),
                                   journal=journal)
            return await run.run([{"id": i} for i in range(4)])
    report = run_in_virtual_time(main())
    assert server.sent == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    assert isinstance(report.stopped_by, AuthenticationError)
    assert sorted(d.position for d in report.in_doubt) == [2, 3]
    assert report.records_unsent == 0
    assert journal.finished_batches == []
    assert whole(report)
