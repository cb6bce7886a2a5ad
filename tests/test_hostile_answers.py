"""Answers that are not what they seem: redirects, 2xx bodies that are not a success, tokens
in failed auth answers; each against a small aiohttp.web server or an in-process transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from pangocdp_async import (
    AuthenticationError,
    PangoCDPClient,
    RawResponse,
    RedirectError,
    RetryPolicy,
    UnsuccessfulResponseError,
)
from pangocdp_async.testing import FakePangoCDP, InProcessTransport, run_in_virtual_time


class Recorder:
    """A server on another origin that records whatever reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, dict(request.headers), await request.read()))
        return web.json_response({"success": True, "token": "t", "expiredAfter": 1800})


async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def elsewhere() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    async for base in _serve(app):
        yield base, recorder


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed(
    status: int, elsewhere: tuple[str, Recorder]
) -> None:
    """A 3xx on the ingest endpoint or the auth endpoint is a RedirectError naming the status
    and the target's origin (not its path or query); nothing, credentials least of all, reaches
    the other origin (before: a 301/302 was followed as GET and counted accepted, and a 307
    carried TOKEN, API_KEY and the auth body there)."""
    target, recorder = elsewhere
    location = f"{target}/steal?key=SECRET-QUERY"

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})
    app = web.Application()
    app.router.add_post("/ingest", redirect)
    app.router.add_post("/auth", redirect)
    async for base in _serve(app):
        async with PangoCDPClient(api_key="KEY-SECRET", token="TOKEN-SECRET",
                                  ingest_url=f"{base}/ingest", rate_limits=()) as client:
            with pytest.raises(RedirectError) as info:
                await client.ingest("order", [{"id": 1}], source="POS")
        async with PangoCDPClient(username="u", api_key="KEY-SECRET", group_key="G-SECRET",
                                  auth_url=f"{base}/auth", ingest_url=f"{base}/ingest",
                                  rate_limits=()) as client:
            with pytest.raises(RedirectError) as auth_info:
                await client.ingest("order", [{"id": 1}], source="POS")
    for err in (info.value, auth_info.value):
        assert err.status == status
        assert err.location == target
        assert str(status) in str(err)
        assert target in str(err)
        assert "SECRET" not in str(err)
    assert recorder.seen == []


def _answers(body: bytes) -> InProcessTransport:
    return InProcessTransport(lambda n, b: RawResponse(200, CIMultiDict(), body))


@pytest.mark.parametrize("body", [b"<html>captive portal</html>", b"", b'"OK"', b"[]",
                                  b'{"success": "false"}', b'{"success": 0}'])
def test_a_2xx_that_is_not_a_success_loses_nothing(body: bytes) -> None:
    """ingest_many against a server answering 200 with something that is not
    {"success": true}: no record is counted accepted; each is reported failed with
    UnsuccessfulResponseError (before: every one was counted accepted and lost)."""
    async def main() -> Any:
        async with PangoCDPClient(api_key="k", token="t", transport=_answers(body),
                                  rate_limits=()) as client:
            report = await client.ingest_many("order", ({"id": i} for i in range(120)),
                                              source="POS")
            return report, client.stats
    report, stats = run_in_virtual_time(main())
    assert report.records_accepted == 0
    assert report.records_failed == 120
    assert {type(f.error) for f in report.failures} == {UnsuccessfulResponseError}
    assert stats.records_accepted == 0


@pytest.mark.parametrize("answer", [
    b'{"success": false, "data": {"token": "TOK-SECRET"}}',
    b'{"success": false, "accessToken": "TOK-SECRET"}',
    b'[{"token": "TOK-SECRET"}]',
    b"token=TOK-SECRET",
    b'{"success": false, "message": "token TOK-SECRET expired"}',
])
async def test_no_failed_auth_answer_leaks_a_token_anywhere(
    answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever shape a failed auth answer has (nested, another key name, a list, plain text,
    the message itself), no token reaches the error, its body, or the log."""
    class Answers:
        async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                       params: Mapping[str, str] | None = None) -> RawResponse:
            return RawResponse(200, CIMultiDict(), answer)
    caplog.set_level(logging.DEBUG, logger="pangocdp_async")
    async with PangoCDPClient(username="u", api_key="k", group_key="g",
                              auth_url="https://auth.example/auth", transport=Answers(),
                              rate_limits=()) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ingest("order", [{"id": 1}], source="POS")
    texts = [str(info.value), repr(info.value), repr(info.value.__dict__), caplog.text]
    assert not [t for t in texts if "TOK-SECRET" in t]


class _AuthAnswers:
    """A transport whose auth answer is fixed (and whose ingest answer is a success)."""

    def __init__(self, auth_body: dict[str, Any]) -> None:
        self.auth_body = auth_body

    async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        if "auth" in str(url):
            return RawResponse(200, CIMultiDict(), orjson.dumps(self.auth_body))
        return RawResponse(200, CIMultiDict(), b'{"success": true}')


async def test_a_failed_auth_answer_carrying_a_token_does_not_keep_it() -> None:
    """An auth answer with "success": false and a token: AuthenticationError's body, str and
    repr hold no token (before: the body kept it)."""
    transport = _AuthAnswers({"success": False, "message": "locked", "token": "TOK-SECRET"})
    async with PangoCDPClient(username="u", api_key="k", group_key="g",
                              auth_url="https://auth.example/auth", transport=transport,
                              rate_limits=()) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ingest("order", [{"id": 1}], source="POS")
    err = info.value
    for text in (str(err), repr(err), repr(err.body), repr(err.__dict__)):
        assert "TOK-SECRET" not in text


def test_the_library_logger_has_a_null_handler() -> None:
    """Warnings do not reach stderr through logging's last resort unless the application
    configures logging (the library adds a NullHandler, as libraries should)."""
    handlers = logging.getLogger("pangocdp_async").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_fake_server_answers_are_successes() -> None:
    """FakePangoCDP's own answers pass the stricter rule (a guard for the fake itself)."""
    async with FakePangoCDP(rate_limits=None) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=()) as client:
            result = await client.ingest("order", [{"id": 1}], source="POS")
    assert result.status == 200


def _refuse_envelope(n: int, body: bytes) -> RawResponse:
    return RawResponse(400, CIMultiDict(), orjson.dumps(
        {"success": False, "errorCode": "MISSING_INFO", "message": "Invalid value of: source"}))


def _refuse_ids(refused: set[int]) -> Any:
    """A server that refuses any request holding one of ``refused``, naming no entry."""
    def respond(n: int, body: bytes) -> RawResponse:
        if refused & {e["id"] for e in orjson.loads(body)["entries"]}:
            return RawResponse(400, CIMultiDict(), orjson.dumps(
                {"success": False, "errorCode": "BAD", "message": "Missing momCode"}))
        return RawResponse(200, CIMultiDict(), b'{"success": true}')
    return respond


def _ingest(transport: InProcessTransport, n: int) -> Any:
    async def main() -> Any:
        async with PangoCDPClient(api_key="k", token="t", transport=transport,
                                  rate_limits=()) as client:
            return await client.ingest_many("order", ({"id": i} for i in range(n)),
                                            source="POS")
    return run_in_virtual_time(main())


def test_an_envelope_refusal_is_not_searched_entry_by_entry() -> None:
    """Every batch refused with the same message naming no entry (a wrong source): 4 requests
    per batch, and the run stops after three batches, the rest unsent, the server's error in
    the report (before: 1,980 requests for 1,000 records)."""
    transport = InProcessTransport(_refuse_envelope)

    async def main() -> Any:
        async with PangoCDPClient(api_key="k", token="t", transport=transport,
                                  rate_limits=()) as client:
            return await client.ingest_many("order", ({"id": i} for i in range(1_000)),
                                            source="NOPE", concurrency=1)
    report = run_in_virtual_time(main())
    assert transport.requests == 3 * 4
    assert report.records_failed == 3 * 2  # the entries tried alone, with the server's words
    assert {f.error.message for f in report.failures} == {"Invalid value of: source"}
    assert report.stopped_by is not None
    assert report.stopped_by.message == "Invalid value of: source"
    assert report.records_unsent == report.records_read - 6  # safe to send once fixed
    assert not report.complete


@pytest.mark.parametrize("bad", [{3, 25}, {24, 25}, {0, 25}, {0, 1, 25}])
def test_bad_records_are_not_taken_for_an_envelope_fault(bad: set[int]) -> None:
    """Bad records where the envelope test looks (the left half, the first entry of the right
    half, the first of the left): no good record is reported failed, and each bad one is
    found or left unsent, never accepted."""
    transport = InProcessTransport(_refuse_ids(bad))
    report = _ingest(transport, 50)
    failed = {f.position for f in report.failures}
    assert failed <= bad
    assert not {e["id"] for e in transport.accepted} & bad
    assert (report.records_accepted + report.records_failed + report.records_unsent
            == report.records_read)


def test_refusals_that_differ_only_in_ids_are_taken_alike() -> None:
    """An envelope refusal whose message carries a per-request trace id is still recognised
    (before: 99 requests per batch of 50, and the run never stopped)."""
    def respond(n: int, body: bytes) -> RawResponse:
        return RawResponse(400, CIMultiDict(), orjson.dumps(
            {"success": False, "errorCode": "MISSING_INFO",
             "message": f"Invalid value of: source (trace {n:08x}-{n * 7919:012x})"}))
    transport = InProcessTransport(respond)
    report = _ingest(transport, 1_000)
    assert transport.requests == 3 * 4
    assert report.stopped_by is not None


def test_a_refused_entry_among_good_ones_is_still_found() -> None:
    """A refusal that names no entry but concerns one record: the search by halves still
    finds it (the envelope rule needs the left half and a lone entry refused alike)."""
    transport = InProcessTransport(_refuse_ids({17}))
    report = _ingest(transport, 100)
    assert [f.position for f in report.failures] == [17]
    assert report.records_accepted == 99
    assert report.stopped_by is None


def test_a_413_splits_the_batch_until_it_fits() -> None:
    """413 for bodies over 2,000 bytes: the batch is split in halves until each part lands;
    one entry too large on its own fails with its size (before: the batch failed whole)."""
    def respond(n: int, body: bytes) -> RawResponse:
        if len(body) > 2_000:
            return RawResponse(413, CIMultiDict(), b"")
        return RawResponse(200, CIMultiDict(), b'{"success": true}')
    transport = InProcessTransport(respond)
    records = [{"id": i, "pad": "x" * 100} for i in range(50)]
    records[9] = {"id": 9, "pad": "y" * 3_000}

    async def main() -> Any:
        async with PangoCDPClient(api_key="k", token="t", transport=transport,
                                  rate_limits=()) as client:
            return await client.ingest_many("order", records, source="POS")
    report = run_in_virtual_time(main())
    assert report.records_accepted == 49
    assert sorted(e["id"] for e in transport.accepted) == [i for i in range(50) if i != 9]
    assert [f.position for f in report.failures] == [9]
    assert "bytes" in str(report.failures[0].error)


async def test_refused_credentials_stop_the_run_and_are_not_counted_as_requests() -> None:
    """Wrong credentials during ingest_many: no ingest request is made, the report says so
    (requests 0, auth_failures 1), and the run stops at once (the rest unsent, the refusal in
    stopped_by) instead of an auth call per batch that could lock the account."""
    async with FakePangoCDP(rate_limits=None) as fake:
        kwargs: dict[str, Any] = {**fake.client_kwargs(), "group_key": "wrong"}
        async with PangoCDPClient(**kwargs, rate_limits=()) as client:
            report = await client.ingest_many("order", ({"id": i} for i in range(10_000)),
                                              source="POS", concurrency=1)
    assert report.requests == 0
    assert report.auth_failures == 1
    assert fake.auth_calls == 1
    assert isinstance(report.stopped_by, AuthenticationError)
    assert report.records_failed == 50
    assert report.records_unsent == report.records_read - 50
    assert fake.requests == []


def test_the_search_for_one_refused_entry_costs_what_the_readme_says() -> None:
    """One refused entry among 50, in each of its 50 places, the server naming none: 6 to 13
    extra requests, 9.9 on average; every other entry accepted once."""
    def extra_requests(poison: int) -> int:
        transport = InProcessTransport(_refuse_ids({poison}))
        report = _ingest(transport, 50)
        assert [f.position for f in report.failures] == [poison]
        assert sorted(e["id"] for e in transport.accepted) == [i for i in range(50)
                                                               if i != poison]
        return transport.requests - 1
    costs = [extra_requests(p) for p in range(50)]
    assert min(costs) == 6
    assert max(costs) == 13
    assert round(sum(costs) / 50, 1) == 9.9


def test_a_success_with_a_byte_order_mark_is_a_success() -> None:
    """{"success": true} after a UTF-8 byte order mark is a success (before: failed, while
    the server had stored the records)."""
    report = _ingest(_answers(b'\xef\xbb\xbf{"success": true}'), 10)
    assert report.records_accepted == 10


@pytest.mark.parametrize(("location", "described"), [
    ("http://[::1]:8080/x?key=SECRET", "http://[::1]:8080"),
    ("//127.0.0.1:9/x?key=SECRET", "//127.0.0.1:9"),
    ("javascript:alert(1)", "a javascript: location"),
    ("https://user:SECRET@h.example/p", "https://h.example"),
    ("/elsewhere?key=SECRET", "a relative location on the same server"),
])
def test_redirect_targets_are_described_by_origin_only(location: str, described: str) -> None:
    """A redirect names where it points, by origin only (no path, query or userinfo)."""
    transport = InProcessTransport(
        lambda n, b: RawResponse(302, CIMultiDict({"Location": location}), b""))
    report = _ingest(transport, 1)
    error = report.failures[0].error
    assert isinstance(error, RedirectError)
    assert error.location == described
    assert "SECRET" not in str(error)


def test_a_backoff_never_sleeps_past_the_budget() -> None:
    """With backoff_max_s far above the batch's 10-s budget, the batch is settled within
    about 10 s, not after a 1,000-s sleep."""
    async def main() -> float:
        transport = InProcessTransport(lambda n, b: RawResponse(503, CIMultiDict(), b""))
        policy = RetryPolicy(backoff_initial_s=1_000, backoff_max_s=1_000, time_budget_s=10)
        async with PangoCDPClient(api_key="k", token="t", transport=transport,
                                  rate_limits=(), retry=policy) as client:
            await client.ingest_many("order", [{"id": 1}], source="POS")
        return asyncio.get_running_loop().time()
    assert run_in_virtual_time(main()) <= 10.5
