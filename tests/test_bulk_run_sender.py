"""One batch to its outcome, request by request: the search for refused entries, 413 splits,
in doubt vs failed, the envelope check and refused credentials. On virtual time, through a
scripted in-process server that decides each answer from the ids a request carries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from pangocdp_async import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    IngestReport,
    PangoCDPClient,
    RawResponse,
    RetryPolicy,
)
from pangocdp_async._bulk._sender import reason_of
from pangocdp_async.testing import run_in_virtual_time

FAST = RetryPolicy(backoff_initial_s=0.01, max_attempts=3)

Answer = Callable[[list[int]], "RawResponse | BaseException"]


def reply(status: int, **body: Any) -> RawResponse:
    return RawResponse(status, CIMultiDict(), orjson.dumps(body))


OK = reply(200, success=True)


def refuse(message: str | None, code: str = "INVALID") -> RawResponse:
    """A 400 naming no entry (unless ``message`` does)."""
    body: dict[str, Any] = {"success": False, "errorCode": code}
    if message is not None:
        body["message"] = message
    return reply(400, **body)


def ok(ids: list[int]) -> RawResponse | BaseException:
    return OK


class Server:
    """Answers each ingest request with ``answer(ids it carries)`` after ``delay(ids)``
    seconds; auth calls get the answers in ``auth`` in turn (then a token)."""

    def __init__(self, answer: Answer = ok, *, delay: Callable[[list[int]], float] | None = None,
                 auth: list[RawResponse | BaseException] | None = None) -> None:
        self.answer = answer
        self.delay = delay
        self.auth = list(auth or [])
        self.auth_calls = 0
        self.sent: list[list[int]] = []
        self.sent_at: list[float] = []  # when each ingest request arrived
        self.stored: list[int] = []

    async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        if "authen" in str(url):
            self.auth_calls += 1
            first = self.auth.pop(0) if self.auth else reply(200, success=True, token="tk",
                                                              expiredAfter=3600)
            if isinstance(first, BaseException):
                raise first
            return first
        ids = [e["id"] for e in orjson.loads(body)["entries"]]
        self.sent.append(ids)
        self.sent_at.append(asyncio.get_running_loop().time())
        if self.delay is not None:
            await asyncio.sleep(self.delay(ids))
        answer = self.answer(ids)
        if isinstance(answer, BaseException):
            raise answer
        if answer.status == 200:
            self.stored.extend(ids)
        return answer


def client_for(server: Server, *, token: bool = True, **kwargs: Any) -> PangoCDPClient:
    kwargs.setdefault("retry", FAST)
    if "limiter" not in kwargs:
        kwargs.setdefault("rate_limits", ())
    creds: dict[str, Any] = ({"token": "t"} if token
                             else {"username": "u", "group_key": "g"})
    return PangoCDPClient(api_key="k", transport=server, **creds, **kwargs)


def ingest(server: Server, n: int, *, token: bool = True, **kwargs: Any) -> IngestReport:
    """``n`` records {"id": i} in one batch (unless told), one sender."""
    kwargs.setdefault("batch_size", min(n, 50))
    kwargs.setdefault("concurrency", 1)

    async def main() -> IngestReport:
        async with client_for(server, token=token) as client:
            return await client.ingest_many("order", [{"id": i} for i in range(n)],
                                            source="POS", **kwargs)
    return run_in_virtual_time(main())


def cancelled_at(server: Server, n: int, at: float, **kwargs: Any) -> tuple[IngestReport, float]:
    """The report of a run cancelled at ``at`` seconds, and when the cancellation returned."""
    kwargs.setdefault("batch_size", n)

    async def main() -> tuple[IngestReport, float]:
        loop = asyncio.get_running_loop()
        async with client_for(server) as client:
            task = asyncio.ensure_future(client.ingest_many(
                "order", [{"id": i} for i in range(n)], source="POS", concurrency=1,
                **kwargs))
            await asyncio.sleep(at)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.last_report is not None
            return client.last_report, loop.time()
    return run_in_virtual_time(main())


def whole(report: IngestReport) -> bool:
    return (report.records_accepted + report.records_failed + report.records_unsent
            + report.records_in_doubt) == report.records_read


def bad_entries(reasons: Mapping[int, str], pick: str = "first") -> Answer:
    """A server that refuses a request holding any of ``reasons``' ids with the reason of the
    first (or last) such id, naming no entry."""
    def answer(ids: list[int]) -> RawResponse:
        bad = [i for i in ids if i in reasons]
        if not bad:
            return OK
        return refuse(reasons[bad[0] if pick == "first" else bad[-1]])
    return answer


def too_large_with(big: int, also: Answer = ok) -> Answer:
    """413 for a request holding entry ``big``; otherwise ``also``."""
    def answer(ids: list[int]) -> RawResponse | BaseException:
        if big in ids:
            return reply(413, errorCode="TOO_LARGE", message="payload too large",
                         requestId="req-9")
        return also(ids)
    return answer


def bad_then(bad: int, other: Callable[[list[int]], RawResponse]) -> Answer:
    """400 "bad" for a request holding ``bad``; otherwise ``other(ids)``."""
    def answer(ids: list[int]) -> RawResponse | BaseException:
        return refuse("bad") if bad in ids else other(ids)
    return answer


def server_error_if(first: int) -> Callable[[list[int]], RawResponse]:
    return lambda ids: reply(503, message="busy") if first in ids else OK


def too_large_if(first: int) -> Callable[[list[int]], RawResponse]:
    return lambda ids: reply(413, message="too large") if first in ids else OK


# (n, answer, requests in order, failed positions, unsent positions)
SEARCHES: dict[str, tuple[int, Answer, list[list[int]], list[int], list[int]]] = {
    "a named index out of range is searched by halves": (
        2, lambda ids: refuse("entries[2]: bad") if 1 in ids else OK,
        [[0, 1], [0], [1]], [1], []),
    "two entries both refused: each tried alone once": (
        2, bad_entries({0: "bad", 1: "bad"}),
        [[0, 1], [0], [1]], [0, 1], []),
    "three entries refused alike: the envelope, one left unsent": (
        3, bad_entries({0: "bad", 1: "bad", 2: "bad"}),
        [[0, 1, 2], [0, 1], [2], [0]], [0, 2], [1]),
    "an odd batch splits with the larger half on the left": (
        5, bad_entries({4: "bad"}),
        [[0, 1, 2, 3, 4], [0, 1, 2], [3], [4]], [4], []),
    "a left half refused for another reason is searched, the right sent whole": (
        4, bad_entries({0: "price is missing", 3: "currency is wrong"}, pick="last"),
        [[0, 1, 2, 3], [0, 1], [0], [1], [2, 3], [2], [3]], [0, 3], []),
    "a left half of 3 refused for another reason is searched without the envelope test": (
        6, bad_entries({0: "price is missing", 5: "currency is wrong"}, pick="last"),
        [[0, 1, 2, 3, 4, 5], [0, 1, 2], [0, 1], [0], [1], [2], [3, 4, 5], [3, 4], [5]],
        [0, 5], []),
    "a lone entry refused for another reason ends the envelope test": (
        4, bad_entries({0: "price is missing", 1: "price is missing",
                        2: "currency is wrong"}),
        [[0, 1, 2, 3], [0, 1], [2], [0], [1], [3]], [0, 1, 2], []),
    "a second lone entry refused for another reason ends the envelope test": (
        4, bad_entries({0: "currency is wrong", 1: "price is missing",
                        2: "price is missing"}, pick="last"),
        [[0, 1, 2, 3], [0, 1], [2], [0], [1], [3]], [0, 1, 2], []),
    "a left half of 2 still suspect is searched, not sent whole again": (
        4, bad_entries({0: "bad"}),
        [[0, 1, 2, 3], [0, 1], [2], [0], [1], [3]], [0], []),
    "the last suspect of the left half is sent alone": (
        4, bad_entries({1: "bad", 2: "bad"}),
        [[0, 1, 2, 3], [0, 1], [2], [0], [1], [3]], [1, 2], []),
    "an envelope refusal with an error code and no message": (
        3, lambda ids: refuse(None, code="OBJECT_TYPE"),
        [[0, 1, 2], [0, 1], [2], [0]], [0, 2], [1]),
    "a left half failing with 503 is not searched": (
        4, bad_then(3, server_error_if(0)),
        [[0, 1, 2, 3], [0, 1], [0, 1], [0, 1], [2, 3], [2], [3]], [0, 1, 3], []),
    "a left half too large is split, and the right half is still sent whole": (
        4, bad_then(3, too_large_if(0)),
        [[0, 1, 2, 3], [0, 1], [0], [1], [2, 3], [2], [3]], [0, 3], []),
    "413 on an odd batch: halves until the entry is alone": (
        3, too_large_with(0),
        [[0, 1, 2], [0, 1], [0], [1], [2]], [0], []),
}


@pytest.mark.parametrize("case", list(SEARCHES))
def test_the_search_sends_exactly_these_requests(case: str) -> None:
    """What reaches the server, request by request, and where each record ends."""
    n, answer, requests, failed, unsent = SEARCHES[case]
    server = Server(answer)
    report = ingest(server, n)
    assert server.sent == requests
    assert sorted(f.position for f in report.failures) == failed
    assert [u.position for u in report.unsent] == unsent
    assert sorted(server.stored) == [i for i in range(n) if i not in failed + unsent]
    assert whole(report)


def test_an_entry_too_large_alone_keeps_the_servers_code_and_request_id() -> None:
    """One entry refused with 413 on its own fails with status 413, the server's errorCode
    and request id, and a message naming the entry and the request's size."""
    server = Server(too_large_with(1))
    report = ingest(server, 2)
    [failure] = report.failures
    error = failure.error
    assert isinstance(error, APIStatusError)
    assert (failure.position, error.status, error.error_code, error.request_id) == (
        1, 413, "TOO_LARGE", "req-9")
    assert error.message is not None
    assert error.message.startswith("entries[1]: the server refuses a request of ")
    assert error.message.endswith(" bytes with this entry alone as too large")


def test_cancelled_while_splitting_a_413_reports_each_record_once() -> None:
    """Cancelled while the right half of a 413 split is in flight (no time to finish): the
    entry already failed stays failed, the half already accepted stays accepted, and only the
    half in flight is in doubt."""
    server = Server(too_large_with(0), delay=lambda ids: 10.0 if ids == [2, 3] else 0.0)
    report, _ = cancelled_at(server, 4, 1.0, shutdown_timeout=0.0)
    assert [f.position for f in report.failures] == [0]
    assert server.stored == [1]
    assert report.records_accepted == 1
    assert [d.position for d in report.in_doubt] == [2, 3]
    assert whole(report)


def test_cancelled_while_a_half_in_doubt_is_known_reports_it_once() -> None:
    """A refused batch is searched; its left half ends in doubt (504 every time); the run is
    cancelled while the right half is in flight: each record is in doubt once."""
    def answer(ids: list[int]) -> RawResponse:
        if 3 in ids and len(ids) == 4:
            return refuse("bad")
        return reply(504) if ids == [0, 1] else OK
    server = Server(answer, delay=lambda ids: 10.0 if ids == [2, 3] else 0.0)
    report, _ = cancelled_at(server, 4, 1.0, shutdown_timeout=0.0)
    assert [d.position for d in report.in_doubt] == [0, 1, 2, 3]
    assert report.records_failed == 0
    assert whole(report)


def test_after_a_413_split_a_sender_in_backoff_stops_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that split a 413 earlier and now waits out a backoff is stopped at once by a
    cancel (it has no request under way), not after its backoff."""
    monkeypatch.setattr(random.Random, "uniform", lambda self, low, high: high)

    def answer(ids: list[int]) -> RawResponse:
        if ids == [0, 1]:
            return reply(413)
        return reply(503) if 2 in ids else OK
    server = Server(answer)
    report, returned_at = cancelled_at(server, 4, 1.0, batch_size=2,
                                       retry=RetryPolicy(backoff_initial_s=5.0,
                                                         backoff_max_s=5.0))
    assert returned_at == pytest.approx(1.0, abs=0.01)
    assert report.records_accepted == 2
    assert [u.position for u in report.unsent] == [2, 3]


def test_an_envelope_refusal_is_logged_with_the_error_and_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each batch refused for its envelope is a warning naming the server's error and how many
    in a row; the third in a row stops the run with that error in stopped_by."""
    server = Server(lambda ids: refuse("objectType is not allowed"))
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        report = ingest(server, 12, batch_size=3)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "pangocdp_async" and r.levelno == logging.WARNING
                and "envelope" in r.getMessage()]
    assert len(warnings) == 3
    for count, text in enumerate(warnings, start=1):
        assert text.startswith("a batch was refused whole, for its envelope (")
        assert "HTTP 400 INVALID: objectType is not allowed" in text
        assert text.endswith(f": {count} in a row")
    assert isinstance(report.stopped_by, BadRequestError)
    assert len(server.sent) == 12  # 4 per batch, then the run stopped
    assert [u.position for u in report.unsent] == [1, 4, 7]  # the rest never read
    assert report.records_read == 9


@pytest.mark.parametrize("status", [400, 401, 403])
def test_credentials_refused_by_the_auth_call_stop_the_run(status: int) -> None:
    """The auth call refuses the credentials (400, 401 or 403): one auth call, no ingest
    request, the run stopped with that error; the batch failed with it, the rest not read."""
    server = Server(auth=[reply(status, success=False, message="wrong credentials")] * 5)
    report = ingest(server, 10, token=False, batch_size=5)
    assert server.auth_calls == 1
    assert server.sent == []
    assert isinstance(report.stopped_by, AuthenticationError)
    assert report.stopped_by.status == status
    assert report.records_failed == report.records_read == 5  # the rest never read
    assert [f.position for f in report.failures] == [0, 1, 2, 3, 4]
    assert all(f.error is report.stopped_by for f in report.failures)
    assert whole(report)


@pytest.mark.parametrize("failures", [1, 2])
def test_an_auth_call_whose_connection_fails_is_retried(failures: int) -> None:
    """A connection error on the auth call is not a refusal: the batch is retried, and
    everything is accepted after another auth call; each failed auth call is counted."""
    server = Server(auth=[APIConnectionError("reset", maybe_sent=False)] * failures)
    report = ingest(server, 3, token=False)
    assert server.auth_calls == failures + 1
    assert report.auth_failures == failures
    assert report.records_accepted == 3
    assert report.stopped_by is None


@pytest.mark.parametrize(("message", "reason"), [
    ("entries[12]: Missing momCode", "entries[#]: Missing momCode"),
    ("trace 3f2a9c1e-77aa-4b1c-9d2e-0123456789ab: objectType 7 unknown",
     "trace #: objectType # unknown"),
    ("Invalid value of: source", "Invalid value of: source"),
])
def test_a_refusals_reason_blanks_its_numbers_and_ids(message: str, reason: str) -> None:
    """Two refusals for the same reason read the same once numbers and ids are blanked (how
    the envelope check and the command's journal compare messages)."""
    assert reason_of(message) == reason
