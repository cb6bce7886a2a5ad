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
    RequestValidationError,
    ServerError,
    UnsuccessfulResponseError,
)
from pangocdp_async._responses import error_for, parse_body
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
