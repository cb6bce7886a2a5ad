"""The exception tree and the mapping of HTTP answers onto it."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from pangocdp_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    PangoCDPError,
    RateLimitedError,
    RedirectError,
    RequestValidationError,
    ServerError,
    UnsuccessfulResponseError,
)
from pangocdp_async._responses import error_for, parse_body, parse_remaining, request_id_of
from pangocdp_async._transport import RawResponse


def _raw(status: int, body: bytes = b"", **headers: str) -> RawResponse:
    return RawResponse(status, CIMultiDict(headers), body)


def test_tree_shape() -> None:
    """Every error derives from PangoCDPError, in the documented shape."""
    status_errors: tuple[type[Exception], ...] = (
        BadRequestError, AuthenticationError, RateLimitedError, ServerError,
        UnsuccessfulResponseError)
    for cls in status_errors:
        assert issubclass(cls, APIStatusError)
    assert issubclass(APITimeoutError, APIConnectionError)
    for base in (APIStatusError, APIConnectionError, RequestValidationError):
        assert issubclass(base, PangoCDPError)
    assert issubclass(RequestValidationError, ValueError)


def test_retriable_lives_on_the_class() -> None:
    """429, 5xx and connection errors are retriable; the rest are not."""
    retriable = {cls.__name__ for cls in (
        PangoCDPError, RequestValidationError, APIStatusError, BadRequestError,
        AuthenticationError, RateLimitedError, ServerError, UnsuccessfulResponseError,
        APIConnectionError, APITimeoutError) if cls.retriable}
    assert retriable == {"RateLimitedError", "ServerError", "APIConnectionError",
                         "APITimeoutError"}


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (429, RateLimitedError),
     (500, ServerError), (502, ServerError), (503, ServerError), (404, APIStatusError),
     (403, APIStatusError)],
)
def test_status_maps_to_class(status: int, cls: type[APIStatusError]) -> None:
    """Each HTTP status that matters has its class; others get APIStatusError."""
    body = b'{"success": false, "errorCode": "MISSING_INFO", "message": "Invalid value of: ' \
           b'objectType", "requestId": "r-1"}'
    err = error_for(_raw(status, body), parse_body(body))
    assert type(err) is cls
    assert err.status == status
    assert err.error_code == "MISSING_INFO"
    assert err.message == "Invalid value of: objectType"
    assert err.request_id == "r-1"
    assert err.body == orjson.loads(body)  # the whole answer stays at hand
    assert str(err) == f"HTTP {status} MISSING_INFO: Invalid value of: objectType (request id r-1)"


def test_success_is_no_error() -> None:
    """A 2xx whose body is a JSON object with "success": true is not an error."""
    assert error_for(_raw(200, b'{"success": true}'), {"success": True}) is None
    body = {"success": True, "requestId": "r"}
    assert error_for(_raw(201, orjson.dumps(body)), body) is None


@pytest.mark.parametrize("raw", [
    b"<html><body>Please log in to the Wi-Fi</body></html>", b"", b'"OK"', b"[]",
    b'{"success": "false"}', b'{"success": 0}', b'{"success": 1}', b"{}", b"null",
])
def test_any_other_2xx_is_unsuccessful(raw: bytes) -> None:
    """A 2xx whose body is anything but {"success": true, ...} (a proxy's HTML page, an empty
    body, "OK", [], "success" as a string or a number, no "success") is an error, never a
    success (before: all of these were counted accepted)."""
    err = error_for(_raw(200, raw), parse_body(raw))
    assert isinstance(err, UnsuccessfulResponseError)
    assert err.status == 200


def test_200_with_success_false_raises() -> None:
    """A 200 whose body says success false is an error too."""
    body = {"success": False, "errorCode": "X", "message": "nope"}
    err = error_for(_raw(200), body)
    assert isinstance(err, UnsuccessfulResponseError)
    assert (err.status, err.error_code, err.message) == (200, "X", "nope")
    assert isinstance(error_for(_raw(200), body, auth=True), AuthenticationError)


@pytest.mark.parametrize(("header", "expected"), [("0", 0.0), ("3", 3.0), (" 12 ", 12.0),
                                                  ("1.5", 1.5), ("soon", None), ("-1", None),
                                                  ("nan", None), (None, None)])
def test_429_retry_after(header: str | None, expected: float | None) -> None:
    """The 429 hint is float seconds; "0" stays 0.0 (under a second), garbage becomes None."""
    headers = {} if header is None else {"X-Rate-Limit-Retry-After-Seconds": header}
    body = b'{"message": "Too many requests!"}'
    err = error_for(_raw(429, body, **headers), parse_body(body))
    assert isinstance(err, RateLimitedError)
    assert err.retry_after == expected
    assert err.message == "Too many requests!"


def test_auth_endpoint_4xx_is_authentication_error() -> None:
    """On the auth endpoint a 400 means bad credentials."""
    body = {"success": False, "errorCode": "MISSING_INFO",
            "message": "Username and ApiKey are required"}
    err = error_for(_raw(400), body, auth=True)
    assert isinstance(err, AuthenticationError)
    assert err.message == "Username and ApiKey are required"


def test_non_json_error_body_is_kept_as_text() -> None:
    """An HTML error page from a proxy becomes the message, truncated."""
    err = error_for(_raw(502, b"<html>bad gateway</html>"), parse_body(b"<html>bad gateway</html>"))
    assert isinstance(err, ServerError)
    assert err.message == "<html>bad gateway</html>"
    assert err.error_code is None


_LONG = "<html>" + "x" * 100 + "</html>"


@pytest.mark.parametrize(("raw", "got"), [
    (b"", "an empty body"),
    (b"null", "an empty body"),
    (b'"OK"', "text 'OK'"),
    (_LONG.encode(), f"text {_LONG[:60]!r}"),
    (b"[]", "a JSON list"),
    (b"7", "a JSON int"),
])
def test_a_2xx_that_is_not_a_success_says_what_came_instead(raw: bytes, got: str) -> None:
    """The error of a 2xx that is not {"success": true} names the rule and describes what was
    received: empty, a text's first 60 characters, or the JSON type."""
    err = error_for(_raw(200, raw), parse_body(raw))
    assert isinstance(err, UnsuccessfulResponseError)
    assert err.message == f'the answer is not a JSON object with "success": true (got {got})'
    assert err.body == parse_body(raw)


@pytest.mark.parametrize(("status", "raw", "message", "request_id"), [
    (502, b"", None, None),
    (502, b"[1, 2]", None, None),
    (500, b'{"success": false, "message": ["not", "text"], "requestId": 123}', None, "123"),
    (503, b"x" * 300, "x" * 200, None),
    (503, b"\xffgateway \xfe down", "\ufffdgateway \ufffd down", None),
])
def test_an_error_body_off_the_documented_shape_keeps_what_can_be_read(
        status: int, raw: bytes, message: str | None, request_id: str | None) -> None:
    """An empty body, a JSON array, fields of the wrong type, a long page, bytes that are not
    UTF-8: the error keeps its status, a text message cut at 200 characters (undecodable bytes
    replaced), and a request id however it was spelt; the body stays available."""
    err = error_for(_raw(status, raw), parse_body(raw))
    assert isinstance(err, ServerError)
    assert (err.status, err.error_code, err.message, err.request_id) == (
        status, None, message, request_id)
    assert err.body == parse_body(raw)


def test_a_429_keeps_its_body() -> None:
    body = {"success": False, "message": "Too many requests!"}
    err = error_for(_raw(429, orjson.dumps(body)), body)
    assert isinstance(err, RateLimitedError)
    assert (err.status, err.body) == (429, body)


def test_the_auth_endpoints_4xx_keeps_status_and_body() -> None:
    body = {"success": False, "message": "Username or ApiKey is incorrect"}
    err = error_for(_raw(403), body, auth=True)
    assert isinstance(err, AuthenticationError)
    assert (err.status, err.body) == (403, body)
    assert isinstance(error_for(_raw(500), body, auth=True), ServerError)


@pytest.mark.parametrize(("status", "headers", "location"), [
    (300, CIMultiDict({"Location": "https://h.example/p?q=1"}), "https://h.example"),
    (399, CIMultiDict(), None),
    # a transport may answer with a plain dict, spelt as the server spells it
    (302, {"Location": "http://other.example:8080/x"}, "http://other.example:8080"),
])
def test_every_3xx_is_a_redirect_error_saying_where_to(
        status: int, headers: dict[str, str], location: str | None) -> None:
    body = {"success": True}
    err = error_for(RawResponse(status, headers, orjson.dumps(body)), body)
    assert isinstance(err, RedirectError)
    assert (err.status, err.location, err.body) == (status, location, None)
    assert err.message == (f"redirected to {location or 'an unknown location'}; redirects are "
                           "not followed (check auth_url and ingest_url)")


@pytest.mark.parametrize(("status", "is_success"), [(200, True), (299, True), (300, False),
                                                    (199, False)])
def test_only_a_2xx_can_be_a_success(status: int, is_success: bool) -> None:
    body = {"success": True}
    assert (error_for(_raw(status), body) is None) is is_success


@pytest.mark.parametrize(("value", "remaining"), [
    ("0", 0), (" 7 ", 7), ("-1", None), ("many", None), (None, None)])
def test_the_remaining_quota_header_is_a_count_or_nothing(
        value: str | None, remaining: int | None) -> None:
    headers = CIMultiDict() if value is None else CIMultiDict({"X-Rate-Limit-Remaining": value})
    assert parse_remaining(RawResponse(200, headers, b"")) == remaining


@pytest.mark.parametrize(("body", "request_id"), [
    ({"requestId": "r-1"}, "r-1"), ({"requestId": 42}, "42"), ({"requestid": "x"}, None),
    ({}, None), ("requestId", None), (None, None)])
def test_the_request_id_is_read_from_requestId_only(body: object, request_id: str | None) -> None:
    assert request_id_of(body) == request_id
