"""PangoCDPClient.ingest end to end against FakePangoCDP, and through a recording transport."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from pangocdp_async import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    PangoCDPClient,
    QuotaScheduler,
    RateLimitedError,
    RawResponse,
    RequestValidationError,
    ServerError,
    UnsuccessfulResponseError,
)
from pangocdp_async.testing import FakePangoCDP
from tests.conftest import ClientFactory, ManualClock

SECRETS = {"api_key": "k-7f3a9c1d-SECRET", "group_key": "g-0b1e44-SECRET"}


class RecordingTransport:
    """A Transport that answers from a list and records what it was asked."""

    def __init__(self, *answers: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    async def post(
        self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> RawResponse:
        self.calls.append((str(url), orjson.loads(body), dict(headers)))
        status, payload, extra = self.answers.pop(0)
        return RawResponse(status, CIMultiDict(extra), orjson.dumps(payload))


def _static_client(transport: RecordingTransport, **kwargs: Any) -> PangoCDPClient:
    return PangoCDPClient(api_key=SECRETS["api_key"], token="tok-SECRET-123",
                          ingest_url="https://ingest.test/v1/ingest?x=1", transport=transport,
                          rate_limits=(), **kwargs)


async def test_end_to_end_ingest(fake: FakePangoCDP, make_client: ClientFactory) -> None:
    """One ingest of 50 entries over loopback lands every entry, once, with a result."""
    entries = [{"orderId": f"o{i}", "total": i * 1.5} for i in range(50)]
    async with make_client() as client:
        result = await client.ingest("order", entries, source="POS", init_data=True)
    assert result.status == 200
    assert result.entries == 50
    assert result.attempts == 1
    assert result.request_id is not None
    assert result.request_id == result.body["requestId"]
    assert result.latency_s >= 0
    assert fake.accepted == entries
    assert [(r.status, r.entries, r.init_data) for r in fake.requests] == [(200, 50, True)]


async def test_wire_format() -> None:
    """Query parameter, headers and body are exactly the documented ones."""
    transport = RecordingTransport((200, {"success": True}, {"X-Rate-Limit-Remaining": "42"}))
    async with _static_client(transport) as client:
        result = await client.ingest(
            "order", [{"orderId": "1"}], source="POS", je_config_id="je-1", je_event_key="k",
            ignored_update_cfs=["customField01"],
        )
    url, body, headers = transport.calls[0]
    assert URL(url).query == {"x": "1", "initData": "false"}
    assert headers == {"Content-Type": "application/json", "TOKEN": "tok-SECRET-123",
                       "API_KEY": SECRETS["api_key"]}
    assert body == {"objectType": "order", "source": "POS", "jeConfigId": "je-1",
                    "jeEventKey": "k", "ignoredUpdateCfs": ["customField01"],
                    "entries": [{"orderId": "1"}]}
    assert result.rate_limit_remaining == 42


async def test_200_with_success_false_raises() -> None:
    """A 200 saying success false raises UnsuccessfulResponseError with the server's words."""
    transport = RecordingTransport(
        (200, {"success": False, "errorCode": "E1", "message": "queue full"}, {}))
    async with _static_client(transport) as client:
        with pytest.raises(UnsuccessfulResponseError, match="E1: queue full"):
            await client.ingest("order", [{"orderId": "1"}], source="POS")


async def test_bad_input_sends_nothing(fake: FakePangoCDP, make_client: ClientFactory) -> None:
    """A validation error happens before auth or any request."""
    async with make_client() as client:
        with pytest.raises(RequestValidationError, match=r"entries\[1\]\.price"):
            await client.ingest("order", [{"price": 1.0}, {"price": float("nan")}], source="POS")
        with pytest.raises(RequestValidationError, match="source"):
            await client.ingest("order", [{"a": 1}], source="")
    assert fake.auth_calls == 0
    assert fake.requests == []


async def test_server_400_is_bad_request(make_client: ClientFactory) -> None:
    """A 400 from the server carries its errorCode, message and request id."""
    async with FakePangoCDP(rate_limits=None, reject_entry=lambda e: "Missing momCode"
                            if "momCode" not in e else None) as fake:
        async with make_client(**fake.client_kwargs()) as client:
            with pytest.raises(BadRequestError) as info:
                await client.ingest("custom-model", [{"momCode": "m", "refId": "1"},
                                                     {"refId": "2"}], source="CRM")
    err = info.value
    assert (err.status, err.error_code) == (400, "INVALID_ENTRY")
    assert err.message == "entries[1]: Missing momCode"
    assert err.request_id is not None
    assert fake.accepted == []


@pytest.mark.parametrize(("step", "header"), [("429:0", 0.0), ("429:3", 3.0)])
async def test_429_raises_with_retry_after(make_client: ClientFactory, step: str,
                                           header: float) -> None:
    """A 429 raises RateLimitedError with the header as float seconds ("0" stays 0.0)."""
    async with FakePangoCDP(rate_limits=None, script=[step]) as fake:
        async with make_client(**fake.client_kwargs()) as client:
            with pytest.raises(RateLimitedError) as info:
                await client.ingest("order", [{"a": 1}], source="POS")
            assert client.limiter.rate_limited == 1
    assert info.value.retry_after == header
    assert info.value.message == "Too many requests!"


async def test_5xx_and_dropped_connection(make_client: ClientFactory) -> None:
    """A 503 raises ServerError; a dropped connection raises APIConnectionError."""
    async with FakePangoCDP(rate_limits=None, script=["503", "drop"]) as fake:
        async with make_client(**fake.client_kwargs()) as client:
            with pytest.raises(ServerError) as server_error:
                await client.ingest("order", [{"a": 1}], source="POS")
            with pytest.raises(APIConnectionError) as conn_error:
                await client.ingest("order", [{"a": 2}], source="POS")
            await client.ingest("order", [{"a": 3}], source="POS")
    assert server_error.value.status == 503
    assert conn_error.value.maybe_sent is True
    assert fake.accepted == [{"a": 3}]


async def test_connection_refused_is_not_sent() -> None:
    """Nothing listening: APIConnectionError that says the request never left."""
    async with FakePangoCDP(rate_limits=None) as fake:
        kwargs = fake.client_kwargs()
    async with PangoCDPClient(**kwargs, rate_limits=(), token="t") as client:
        with pytest.raises(APIConnectionError) as info:
            await client.ingest("order", [{"a": 1}], source="POS")
    assert info.value.maybe_sent is False


async def test_secrets_never_shown(
    fake: FakePangoCDP, caplog: pytest.LogCaptureFixture, clock: ManualClock
) -> None:
    """api key, group key and token appear in no repr, error or log line."""
    caplog.set_level(logging.DEBUG, logger="pangocdp_async")
    async with FakePangoCDP(rate_limits=None, api_key=SECRETS["api_key"],
                            group_key=SECRETS["group_key"], script=["503", "429:0"]) as server:
        client = PangoCDPClient(**server.client_kwargs(),
                                limiter=QuotaScheduler((), clock=clock, sleep=clock.sleep))
        texts = [repr(client), str(client)]
        async with client:
            for _ in range(2):
                with pytest.raises((ServerError, RateLimitedError)) as info:
                    await client.ingest("order", [{"a": 1}], source="POS")
                texts += [str(info.value), repr(info.value), repr(info.value.body)]
            await client.ingest("order", [{"a": 1}], source="POS")
            texts += [repr(client), repr(client._tokens), repr(client.limiter)]
            server.expire_tokens()
            await client.ingest("order", [{"a": 2}], source="POS")
        token_values = list(server._tokens)
        bad = PangoCDPClient(username=server.username, api_key=server.api_key,
                             group_key="wrong-SECRET", auth_url=server.auth_url,
                             ingest_url=server.ingest_url, rate_limits=())
        async with bad:
            with pytest.raises(AuthenticationError) as info2:
                await bad.ingest("order", [{"a": 1}], source="POS")
        texts += [str(info2.value), repr(info2.value.__dict__), repr(bad)]
    texts += [record.getMessage() for record in caplog.records]
    assert any("429" in t for t in texts)  # the log did say something
    assert clock.slept >= 1.0  # the 429 paused the scheduler (on the injected clock)
    blob = "\n".join(texts)
    for secret in [*SECRETS.values(), "wrong-SECRET", *token_values]:
        assert secret not in blob


async def test_static_token_repr_is_masked() -> None:
    """A client built with a static token masks it."""
    client = PangoCDPClient(api_key="k-SECRET", token="tok-SECRET", rate_limits=())
    assert "SECRET" not in repr(client)
    assert "token='**********'" in repr(client)


def test_env_var_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing arguments come from PANGOCDP_* variables, read in the constructor."""
    monkeypatch.setenv("PANGOCDP_USERNAME", "env-user")
    monkeypatch.setenv("PANGOCDP_API_KEY", "env-key")
    monkeypatch.setenv("PANGOCDP_GROUP_KEY", "env-group")
    monkeypatch.setenv("PANGOCDP_AUTH_URL", "http://127.0.0.1:1/auth")
    monkeypatch.setenv("PANGOCDP_INGEST_URL", "http://127.0.0.1:1/ingest")
    client = PangoCDPClient()
    assert client.username == "env-user"
    assert (client.auth_url, client.ingest_url) == ("http://127.0.0.1:1/auth",
                                                    "http://127.0.0.1:1/ingest")
    assert "env-key" not in repr(client)


def test_default_urls_are_the_public_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arguments or env vars the URLs seen in public integrations are used."""
    for name in ("PANGOCDP_AUTH_URL", "PANGOCDP_INGEST_URL"):
        monkeypatch.delenv(name, raising=False)
    client = PangoCDPClient(username="u", api_key="k", group_key="g")
    assert client.auth_url == "https://account.mydatalakes.com/api/accounts/authen"
    assert client.ingest_url == "https://svc.mydatalakes.com/dhub-i/api/v1.0/ingest"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"username": "u", "group_key": "g"}, "api_key is required"),
        ({"api_key": "k", "group_key": "g"}, "username required"),
        ({"api_key": "k", "username": "u"}, "group_key required"),
        ({"api_key": "k", "token": "t", "ingest_url": "ftp://x"}, "http"),
        ({"api_key": "k", "token": "t", "timeout": 0}, "timeout"),
    ],
)
def test_constructor_errors(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any],
                            message: str) -> None:
    """Missing credentials and bad settings fail at construction with a clear message."""
    for name in ("PANGOCDP_USERNAME", "PANGOCDP_API_KEY", "PANGOCDP_GROUP_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=message):
        PangoCDPClient(**kwargs)


async def test_not_open_is_a_clear_error() -> None:
    """Using the client outside 'async with' says so."""
    client = PangoCDPClient(api_key="k", token="t", rate_limits=())
    with pytest.raises(RuntimeError, match="async with"):
        await client.ingest("order", [{"a": 1}], source="POS")


async def test_a_borrowed_session_that_is_closed_is_refused_at_open(
        fake: FakePangoCDP) -> None:
    """A closed session passed in is refused when the client opens, saying what to do."""
    session = aiohttp.ClientSession()
    await session.close()
    client = PangoCDPClient(**fake.client_kwargs(), session=session, rate_limits=())
    with pytest.raises(RuntimeError) as info:
        await client.open()
    assert str(info.value) == ("the aiohttp session given to this client is closed; pass an "
                               "open one")
    assert fake.requests == []


@pytest.mark.parametrize("timeout", [0.05, aiohttp.ClientTimeout(total=0.05)])
async def test_a_borrowed_session_keeps_the_clients_timeout(
        timeout: float | aiohttp.ClientTimeout) -> None:
    """The client's ``timeout`` (seconds or an aiohttp.ClientTimeout) bounds each request on a
    session passed in too (whose own default is 5 minutes): a server slower than it gives
    APIConnectionError."""
    async with FakePangoCDP(rate_limits=None, latency_s=0.3) as fake:
        async with aiohttp.ClientSession() as session:
            async with PangoCDPClient(**fake.client_kwargs(), session=session, timeout=timeout,
                                      rate_limits=()) as client:
                with pytest.raises(APIConnectionError):
                    await client.ingest("order", [{"a": 1}], source="POS")


async def test_borrowed_session_stays_open(fake: FakePangoCDP) -> None:
    """A session passed in is used and not closed; an owned one verifies TLS and is closed."""
    async with aiohttp.ClientSession() as session:
        async with PangoCDPClient(**fake.client_kwargs(), session=session,
                                  rate_limits=()) as client:
            await client.ingest("order", [{"a": 1}], source="POS")
        assert not session.closed
    owned = PangoCDPClient(**fake.client_kwargs(), rate_limits=())
    async with owned:
        assert owned._session is not None
        connector = owned._session.connector
        assert connector is not None
        # TLS verification stays on: the client never passes ssl=False
        assert getattr(connector, "_ssl", None) is True
        session_ref = owned._session
    assert session_ref.closed
