"""Tokens: cached, refreshed once for many concurrent callers, refreshed once on a 401."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from pangocdp_async import APIStatusError, AuthenticationError, PangoCDPClient, ServerError
from pangocdp_async._auth import TokenManager
from pangocdp_async._transport import RawResponse
from pangocdp_async.testing import FakePangoCDP
from tests.conftest import ClientFactory, ManualClock


async def test_token_is_cached(fake: FakePangoCDP, make_client: ClientFactory) -> None:
    """Ten sequential ingests make one auth call."""
    async with make_client() as client:
        for i in range(10):
            await client.ingest("order", [{"i": i}], source="POS")
    assert fake.auth_calls == 1
    assert client.auth_calls == 1


async def test_single_flight_after_expiry(
    fake: FakePangoCDP, make_client: ClientFactory, clock: ManualClock
) -> None:
    """20 concurrent ingests after the token expired cause exactly one auth call."""
    async with make_client(clock=clock) as client:
        await client.ingest("order", [{"i": 0}], source="POS")
        assert fake.auth_calls == 1
        clock.advance(1800)  # past expiredAfter minus the refresh margin
        results = await asyncio.gather(
            *(client.ingest("order", [{"i": i}], source="POS") for i in range(20))
        )
    assert fake.auth_calls == 2
    assert client.auth_calls == 2
    assert all(r.status == 200 for r in results)
    assert len(fake.accepted) == 21


async def test_refresh_before_expiry_margin(
    fake: FakePangoCDP, make_client: ClientFactory, clock: ManualClock
) -> None:
    """The token is refreshed 60 s before the server's stated expiry, not after it."""
    async with make_client(clock=clock) as client:
        await client.ingest("order", [{"i": 0}], source="POS")
        clock.advance(1800 - 61)
        await client.ingest("order", [{"i": 1}], source="POS")
        assert fake.auth_calls == 1
        clock.advance(2)
        await client.ingest("order", [{"i": 2}], source="POS")
        assert fake.auth_calls == 2


async def test_401_refreshes_once_and_retries(
    fake: FakePangoCDP, make_client: ClientFactory
) -> None:
    """A 401 on ingest causes one refresh and one retry, which succeeds."""
    async with make_client() as client:
        await client.ingest("order", [{"i": 0}], source="POS")
        fake.expire_tokens()
        result = await client.ingest("order", [{"i": 1}], source="POS")
    assert result.attempts == 2
    assert fake.auth_calls == 2
    assert [r.status for r in fake.requests] == [200, 401, 200]
    assert fake.accepted == [{"i": 0}, {"i": 1}]


async def test_concurrent_401s_share_one_refresh(
    fake: FakePangoCDP, make_client: ClientFactory
) -> None:
    """Ten requests refused with 401 at once refresh the token once between them."""
    async with make_client() as client:
        await client.ingest("order", [{"i": 0}], source="POS")
        fake.expire_tokens()
        await asyncio.gather(*(client.ingest("order", [{"i": i}], source="POS")
                               for i in range(1, 11)))
    assert fake.auth_calls == 2
    assert sorted(e["i"] for e in fake.accepted) == list(range(11))


@pytest.mark.parametrize(
    ("creds", "message"),
    [
        ({"username": "demo", "api_key": "wrong", "group_key": "demo-group-key"},
         "Username or ApiKey is incorrect"),
        ({"username": "demo", "api_key": "demo-api-key", "group_key": "nope"},
         "Username or ApiKey is incorrect"),
    ],
)
async def test_bad_credentials(
    fake: FakePangoCDP, creds: dict[str, str], message: str
) -> None:
    """Wrong credentials raise AuthenticationError with the server's message and no secret."""
    async with PangoCDPClient(username=creds["username"], api_key=creds["api_key"],
                              group_key=creds["group_key"], auth_url=fake.auth_url,
                              ingest_url=fake.ingest_url, rate_limits=()) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.ingest("order", [{"i": 0}], source="POS")
    assert info.value.status == 400
    assert info.value.message == message
    assert info.value.error_code == "INVALID_CREDENTIALS"
    for secret in creds.values():
        if secret != "demo":
            assert secret not in str(info.value)
            assert secret not in repr(info.value.body)


async def test_static_token_skips_auth(fake: FakePangoCDP, make_client: ClientFactory) -> None:
    """A static token is used as is; a 401 with it is final (it cannot be refreshed)."""
    async with make_client() as authed:  # obtain a real token from the fake
        await authed.ingest("order", [{"i": 0}], source="POS")
    token = next(iter(fake._tokens))
    async with PangoCDPClient(api_key=fake.api_key, token=token, ingest_url=fake.ingest_url,
                              rate_limits=()) as client:
        await client.ingest("order", [{"i": 1}], source="POS")
        assert fake.auth_calls == 1
        fake.expire_tokens()
        with pytest.raises(AuthenticationError) as info:
            await client.ingest("order", [{"i": 2}], source="POS")
    assert info.value.status == 401
    assert token not in str(info.value)
    assert client.auth_calls == 0
    assert [r.status for r in fake.requests][-2:] == [200, 401]  # no retry


async def test_auth_failure_reaches_every_waiter(
    fake: FakePangoCDP, make_client: ClientFactory
) -> None:
    """When the single auth call fails, all concurrent callers get the error; none hangs."""
    async with make_client(api_key="wrong") as client:
        results = await asyncio.gather(
            *(client.ingest("order", [{"i": i}], source="POS") for i in range(5)),
            return_exceptions=True,
        )
    assert all(isinstance(r, AuthenticationError) for r in results)
    assert fake.auth_calls == 1


async def test_a_token_is_not_used_at_the_instant_it_is_due_for_refresh(
    fake: FakePangoCDP, make_client: ClientFactory, clock: ManualClock
) -> None:
    """The token is good strictly before its stated lifetime minus the 60 s margin: at that
    instant it is refreshed."""
    async with make_client(clock=clock) as client:
        await client.ingest("order", [{"i": 0}], source="POS")
        clock.advance(1800 - 60)
        await client.ingest("order", [{"i": 1}], source="POS")
    assert fake.auth_calls == 2


class _AuthOnly:
    """A transport that answers auth calls with tokens t1, t2, ... and keeps what was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: Any, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        self.calls.append((str(url), body, dict(headers)))
        token = f"t{len(self.calls)}"
        answer = {"success": True, "token": token, "expiredAfter": 1800}
        return RawResponse(200, {}, orjson.dumps(answer))


def _manager(transport: _AuthOnly, clock: ManualClock) -> TokenManager:
    return TokenManager(transport=transport, auth_url="http://auth.invalid/api/auth",
                        username="me", api_key=SecretStr("key-1"),
                        group_key=SecretStr("group-1"), clock=clock)


async def test_the_auth_call_is_one_json_post_of_the_credentials(clock: ManualClock) -> None:
    transport = _AuthOnly()
    assert await _manager(transport, clock).get() == "t1"
    ((url, body, headers),) = transport.calls
    assert url == "http://auth.invalid/api/auth"
    assert orjson.loads(body) == {"username": "me", "apiKey": "key-1", "cdpGKey": "group-1"}
    assert headers == {"Content-Type": "application/json"}  # as a transport's post() sees it


async def test_a_401_for_a_token_already_replaced_costs_no_auth_call(clock: ManualClock) -> None:
    """Two requests sent with t1; the first 401 refreshes to t2; the second 401 (still about
    t1) is answered with t2 without another auth call. A refused token that is the current
    one is refreshed."""
    transport = _AuthOnly()
    tokens = _manager(transport, clock)
    assert await tokens.get() == "t1"
    assert await tokens.refresh("t1") == "t2"
    assert await tokens.refresh("t1") == "t2"
    assert tokens.auth_calls == 2
    assert await tokens.refresh("t2") == "t3"
    assert tokens.auth_calls == 3
    assert "t3" not in repr(tokens)
    assert "key-1" not in repr(tokens)
    assert "token=valid, auth_calls=3" in repr(tokens)


class _Answers(_AuthOnly):
    """Answers auth calls with the given (status, body) pairs, in turn."""

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        super().__init__()
        self.answers = list(answers)

    async def post(self, url: Any, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        self.calls.append((str(url), body, dict(headers)))
        status, answer = self.answers.pop(0)
        return RawResponse(status, {}, answer)


@pytest.mark.parametrize(("status", "body", "message", "error_code", "request_id"), [
    (401, b'{"success": false, "errorCode": "E1", "message": "bad key", "requestId": "r-9"}',
     "bad key", "E1", "r-9"),
    (401, b'{"success": false, "message": "your token abc123 is invalid", "requestId": "r-8"}',
     "(a message mentioning the token, withheld)", None, "r-8"),
    (400, b'{"success": false, "errorCode": "NO_USER", "data": {"token": "abc123"}}',
     None, "NO_USER", None),
    (502, b"<html>token=abc123 proxy error</html>", "the auth answer is not JSON", None, None),
])
async def test_a_failed_auth_keeps_the_status_code_and_id_but_no_token_text(
        clock: ManualClock, caplog: pytest.LogCaptureFixture, status: int, body: bytes,
        message: str | None, error_code: str | None, request_id: str | None) -> None:
    caplog.set_level(logging.WARNING, logger="pangocdp_async")
    tokens = _manager(_Answers((status, body)), clock)
    with pytest.raises(APIStatusError) as err:
        await tokens.get()
    error = err.value
    # The operator's log says the authentication failed, and why, without the token either.
    (record,) = [r for r in caplog.records if r.name == "pangocdp_async"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("authentication failed: ")
    assert str(error) in record.getMessage()
    assert "abc123" not in record.getMessage()
    assert getattr(error, "status", None) == status
    assert getattr(error, "message", None) == message
    assert getattr(error, "request_id", None) == request_id
    assert getattr(error, "error_code", None) == error_code
    assert "abc123" not in str(error)
    assert "abc123" not in repr(error)


async def test_after_a_failed_refresh_the_next_call_authenticates_again(
        clock: ManualClock) -> None:
    ok = orjson.dumps({"success": True, "token": "t1", "expiredAfter": 1800})
    tokens = _manager(_Answers((200, ok), (503, b"{}"), (200, ok.replace(b"t1", b"t3"))),
                      clock)
    assert "token=none" in repr(tokens)
    assert await tokens.get() == "t1"
    with pytest.raises(ServerError):
        await tokens.refresh("t1")
    assert "token=none" in repr(tokens)
    assert await tokens.get() == "t3"
    assert tokens.auth_calls == 3


async def test_a_static_token_cannot_be_refreshed_and_never_shows() -> None:
    from pangocdp_async._auth import StaticToken

    static = StaticToken(SecretStr("static-secret-1"))
    assert static.can_refresh is False
    assert await static.get() == "static-secret-1"
    with pytest.raises(AuthenticationError) as err:
        await static.refresh("static-secret-1")
    assert err.value.status == 401
    # The message says what to do instead.
    assert str(err.value) == ("HTTP 401: the static token was refused and cannot be refreshed "
                              "(pass username and group_key to let the client authenticate)")
    assert repr(static) == "StaticToken(token='**********')"
    assert "static-secret-1" not in str(err.value)


@pytest.mark.parametrize(("status", "body", "text"), [
    (200, b'{"success": true}', "HTTP 200: the auth answer carries no token"),
    (201, b'{"success": true, "expiredAfter": 1800}',
     "HTTP 201: the auth answer carries no token"),
    (200, b'{"success": true, "token": "", "expiredAfter": 1800}',
     "HTTP 200: the auth answer carries an empty token"),
])
async def test_a_success_without_a_token_is_an_authentication_error(
        clock: ManualClock, status: int, body: bytes, text: str) -> None:
    """A 2xx auth answer that says success but holds no usable token is refused by name,
    with the answer's status."""
    tokens = _manager(_Answers((status, body)), clock)
    with pytest.raises(AuthenticationError) as err:
        await tokens.get()
    assert err.value.status == status
    assert str(err.value) == text


def test_an_auth_call_cut_short_by_shutdown_reports_no_error() -> None:
    """A program that ends (asyncio.run cancels what is left) while the auth call is under way
    gets no "Exception in callback" error from the token cache."""
    problems: list[dict[str, Any]] = []

    class _Hangs(_AuthOnly):
        async def post(self, url: Any, *, body: bytes, headers: Mapping[str, str],
                       params: Mapping[str, str] | None = None) -> RawResponse:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        tokens = _manager(_Hangs(), ManualClock())
        asyncio.get_running_loop().create_task(tokens.get())
        for _ in range(3):
            await asyncio.sleep(0)
        assert tokens.auth_calls == 1  # the auth call is under way when main returns

    asyncio.run(main())
    assert problems == []


class _Lifetimes(_AuthOnly):
    """Answers auth calls with tokens t1, t2, ... whose answers carry ``fields``."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    async def post(self, url: Any, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        self.calls.append((str(url), body, dict(headers)))
        answer = {"success": True, "token": f"t{len(self.calls)}", **self.fields}
        return RawResponse(200, {}, orjson.dumps(answer))


@pytest.mark.parametrize(("fields", "good_for", "lifetime"), [
    ({"expiredAfter": 100}, 50.0, 100),  # the 60-s margin is capped at half the life
    ({"expiredAfter": 1}, 0.5, 1),
    ({"expiredAfter": 600}, 540.0, 600),
    ({"expiredAfter": 0}, 1740.0, 1800),  # nonsense: the documented 30 minutes instead
    ({"expiredAfter": -5}, 1740.0, 1800),
    ({}, 1740.0, 1800),  # no lifetime stated
])
async def test_a_token_is_used_for_its_stated_life_less_the_margin(
        clock: ManualClock, caplog: pytest.LogCaptureFixture, fields: dict[str, Any],
        good_for: float, lifetime: int) -> None:
    """The token is reused until its life less the margin has passed, then replaced; the
    debug log says how long it lives."""
    caplog.set_level(logging.DEBUG, logger="pangocdp_async")
    tokens = _manager(_Lifetimes(fields), clock)
    start = clock.now
    assert await tokens.get() == "t1"
    clock.now = start + good_for * 0.99
    assert await tokens.get() == "t1"
    clock.now = start + good_for
    assert await tokens.get() == "t2"
    assert tokens.auth_calls == 2
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("authenticated;") and m.endswith(f" {lifetime} s") for m in logged)
