"""PangoCDPClient's surface: what its repr shows, what the bulk calls put on the wire, what
one request reports and logs, and its misuse messages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from pangocdp_async import (
    AuthenticationError,
    PangoCDPClient,
    QuotaScheduler,
    RawResponse,
    UnsuccessfulResponseError,
)
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock


class _Wire:
    """Answers every POST with success and keeps each request's query and body."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        self.sent.append((dict(URL(str(url)).query), orjson.loads(body)))
        return RawResponse(200, CIMultiDict(), b'{"success": true}')


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"username": "u", "api_key": "k-SECRET", "group_key": "g-SECRET"},
     "api_key='**********', group_key='**********', token=None,"),
    ({"api_key": "k-SECRET", "token": "t-SECRET"},
     "api_key='**********', group_key=None, token='**********',"),
])
def test_repr_says_which_credentials_are_set_and_masks_them(
        kwargs: dict[str, Any], shown: str) -> None:
    client = PangoCDPClient(**kwargs, rate_limits=())
    assert shown in repr(client)
    assert "SECRET" not in repr(client)


def _bulk(call: str, **kwargs: Any) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """The requests one ingest_many or stream of two records makes, with ``kwargs``."""
    async def main() -> list[tuple[dict[str, str], dict[str, Any]]]:
        wire = _Wire()
        async with PangoCDPClient(api_key="k", token="t", transport=wire,
                                  rate_limits=()) as client:
            records = [{"id": 1}, {"id": 2}]
            if call == "ingest_many":
                report = await client.ingest_many("order", records, source="POS", **kwargs)
            else:
                async with client.stream("order", source="POS", **kwargs) as stream:
                    for record in records:
                        await stream.send(record)
                report = stream.report
            assert report.records_accepted == 2
        return wire.sent
    return run_in_virtual_time(main())


@pytest.mark.parametrize("call", ["ingest_many", "stream"])
@pytest.mark.parametrize(("kwargs", "flag"), [({}, "false"), ({"init_data": False}, "false"),
                                              ({"init_data": True}, "true")])
def test_bulk_calls_send_init_data_false_unless_asked(
        call: str, kwargs: dict[str, bool], flag: str) -> None:
    sent = _bulk(call, **kwargs)
    assert [query for query, _ in sent] == [{"initData": flag}]


@pytest.mark.parametrize("call", ["ingest_many", "stream"])
def test_bulk_calls_send_the_optional_envelope_fields(call: str) -> None:
    sent = _bulk(call, je_config_id="je-1", je_event_key="evt",
                 ignored_update_cfs=["customField01"])
    assert [body for _, body in sent] == [{
        "objectType": "order", "source": "POS", "jeConfigId": "je-1", "jeEventKey": "evt",
        "ignoredUpdateCfs": ["customField01"], "entries": [{"id": 1}, {"id": 2}]}]


class _Timed:
    """Answers POSTs in turn from ``answers`` (status, body), each taking 0.25 s of ``clock``."""

    def __init__(self, clock: ManualClock, *answers: tuple[int, bytes]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.tokens: list[str] = []

    async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        self.clock.advance(0.25)
        if str(url).endswith("/auth"):
            token = f"t{len(self.tokens) + 1}"
            self.tokens.append(token)
            return RawResponse(200, {}, orjson.dumps({"success": True, "token": token,
                                                      "expiredAfter": 1800}))
        status, answer = self.answers.pop(0)
        return RawResponse(status, {}, answer)


def _authing(transport: _Timed, clock: ManualClock) -> PangoCDPClient:
    return PangoCDPClient(username="u", api_key="k", group_key="g", auth_url="http://a.test/auth",
                          ingest_url="http://i.test/ingest", transport=transport, clock=clock,
                          rate_limits=())


async def test_latency_is_the_time_the_post_took(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """The result's latency is the POST's own time on the client's clock (auth not included);
    the debug log names the entries, the status and the time."""
    caplog.set_level(logging.DEBUG, logger="pangocdp_async")
    transport = _Timed(clock, (200, b'{"success": true}'))
    async with _authing(transport, clock) as client:
        result = await client.ingest("order", [{"a": 1}, {"a": 2}], source="POS")
    assert result.latency_s == 0.25
    assert client.stats.records_accepted == 2
    assert "ingest: 2 entries, HTTP 200 in 0.250 s" in [r.getMessage() for r in caplog.records]


async def test_a_401_refreshes_once_says_so_and_then_gives_up(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """Two 401s in a row: one refresh (logged at INFO), one retry with the new token, then the
    AuthenticationError; the debug log names the status of the failure."""
    caplog.set_level(logging.DEBUG, logger="pangocdp_async")
    refused = b'{"success": false, "message": "token expired"}'
    transport = _Timed(clock, (401, refused), (401, refused))
    async with _authing(transport, clock) as client:
        with pytest.raises(AuthenticationError, match="token expired"):
            await client.ingest("order", [{"a": 1}], source="POS")
    assert transport.tokens == ["t1", "t2"]
    assert transport.answers == []
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["ingest: token refused (HTTP 401); refreshing once"]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("ingest: HTTP 401 after 0.250 s: HTTP 401: token expired")
               for m in debug)
    assert client.stats.records_accepted == 0


async def test_a_client_used_while_closed_says_how_to_open_it() -> None:
    """Before ``async with`` and after it, every call refuses at once, saying how to open the
    client, also when the client was given a transport (before: the bulk calls started a run
    whose senders then crashed with a PipelineError)."""
    message = r"^the client is not open: use 'async with PangoCDPClient\(\.\.\.\)'$"
    wire = _Wire()
    client = PangoCDPClient(api_key="k", token="t", transport=wire, rate_limits=())
    assert client.last_report is None  # (no run yet)
    assert client.is_closed
    for _ in range(2):
        with pytest.raises(RuntimeError, match=message):
            await client.ingest("order", [{"a": 1}], source="POS")
        with pytest.raises(RuntimeError, match=message):
            await client.ingest_many("order", [{"a": 1}], source="POS")
        with pytest.raises(RuntimeError, match=message):
            client.stream("order", source="POS")
        async with client:
            await client.ingest("order", [{"a": 1}], source="POS")
    assert len(wire.sent) == 2


async def test_init_data_must_be_a_bool() -> None:
    async with PangoCDPClient(api_key="k", token="t", transport=_Wire(), rate_limits=()) as c:
        with pytest.raises(TypeError, match=r"^init_data must be True or False, got 'yes'$"):
            await c.ingest("order", [{"a": 1}], source="POS", init_data="yes")  # type: ignore[arg-type]


async def test_a_2xx_that_says_it_failed_counts_no_record_accepted(clock: ManualClock) -> None:
    transport = _Timed(clock, (200, b'{"success": false, "message": "queue full"}'),
                       (200, b'{"success": true}'))
    async with _authing(transport, clock) as client:
        with pytest.raises(UnsuccessfulResponseError, match="queue full"):
            await client.ingest("order", [{"a": 1}, {"a": 2}], source="POS")
        await client.ingest("order", [{"a": 1}, {"a": 2}, {"a": 3}], source="POS")
    assert client.stats.records_accepted == 3


_REFUSED: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"username": 1, "api_key": "k", "group_key": "g"}, TypeError,
     "username must be a str, got int"),
    ({"username": "u", "api_key": 1, "group_key": "g"}, TypeError,
     "api_key must be a str, got int"),
    ({"username": "u", "api_key": "k", "group_key": 1}, TypeError,
     "group_key must be a str, got int"),
    ({"api_key": "k", "token": 1}, TypeError, "token must be a str, got int"),
    ({"api_key": "k", "token": "t", "auth_url": 1}, TypeError,
     "auth_url must be a str, got int"),
    ({"api_key": "k", "token": "t", "ingest_url": 1}, TypeError,
     "ingest_url must be a str, got int"),
    ({"api_key": "k"}, ValueError,
     "username and group_key required to authenticate: pass them (or set PANGOCDP_USERNAME "
     "and PANGOCDP_GROUP_KEY), or pass a static token="),
    ({"api_key": "k", "token": " "}, ValueError, "token must not be empty"),
    ({"api_key": "k", "token": "t", "limiter": QuotaScheduler(()), "rate_limits": ()},
     ValueError, "pass either a limiter object or rate_limits=, not both"),
    ({"api_key": "k", "token": "t", "auth_url": ""}, ValueError,
     "auth_url must be an http(s) URL with a host, got ''"),
    ({"api_key": "k", "token": "t", "ingest_url": "ftp://x"}, ValueError,
     "ingest_url must be an http(s) URL with a host, got 'ftp://x'"),
    ({"api_key": "k", "token": "t", "ingest_url": "http://[::1"}, ValueError,
     "ingest_url is not a valid URL: 'http://[::1'"),
    ({"api_key": "k", "token": "t", "auth_url": "http://a.test:99999/auth"}, ValueError,
     "auth_url is not a valid URL: 'http://a.test:99999/auth'"),
    ({"api_key": "k", "token": "t", "limiter": 3}, TypeError,
     "limiter must be a QuotaScheduler, a SharedQuotaScheduler or a quota spec such as "
     "'sqlite:PATH', got int"),
    ({"api_key": "k", "token": "t", "session": 3}, TypeError,
     "session must be an aiohttp.ClientSession, got int"),
    ({"api_key": "k", "token": "t", "transport": 3}, TypeError,
     "transport must have an async post(), got int"),
    ({"api_key": "k", "token": "t", "timeout": 0}, ValueError,
     "timeout must be a finite number of seconds > 0, got 0"),
    ({"api_key": "k", "token": "t", "retry": 3}, TypeError,
     "retry must be a RetryPolicy, got int"),
]


@pytest.mark.parametrize(("kwargs", "kind", "message"), _REFUSED)
def test_bad_credentials_and_settings_are_refused_by_name(
        kwargs: dict[str, Any], kind: type[Exception], message: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refusal says which argument is wrong and, for what is missing, how to give it."""
    for name in ("PANGOCDP_USERNAME", "PANGOCDP_API_KEY", "PANGOCDP_GROUP_KEY",
                 "PANGOCDP_AUTH_URL", "PANGOCDP_INGEST_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(kind) as info:
        PangoCDPClient(**kwargs)
    assert str(info.value) == message
