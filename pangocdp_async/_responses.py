"""Turning an HTTP answer into a parsed body or the right exception. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from yarl import URL

from ._constants import HEADER_RATE_LIMIT_REMAINING, HEADER_RETRY_AFTER
from ._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    RateLimitedError,
    RedirectError,
    ServerError,
    UnsuccessfulResponseError,
)
from ._models import ErrorBody
from ._retry import parse_retry_after
from ._transport import RawResponse

__all__ = ["error_for", "parse_body", "parse_remaining", "request_id_of"]

_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    429: RateLimitedError,
}


def parse_body(raw: bytes) -> Any:
    """The JSON body, or the text when it is not JSON (``None`` when empty)."""
    if not raw:
        return None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, which orjson refuses
        raw = raw[3:]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def request_id_of(body: Any) -> str | None:
    if isinstance(body, dict):
        rid = body.get("requestId")
        if rid is not None:
            return str(rid)
    return None


def parse_remaining(response: RawResponse) -> int | None:
    value = response.headers.get(HEADER_RATE_LIMIT_REMAINING)
    if value is None:
        return None
    try:
        remaining = int(value.strip())
    except ValueError:
        return None
    return remaining if remaining >= 0 else None  # a count; anything else is unreadable


def error_for(response: RawResponse, body: Any, *, auth: bool = False) -> APIStatusError | None:
    """The exception this answer means, or ``None`` for a success.

    ``auth=True`` maps 4xx of the auth endpoint to :class:`AuthenticationError`, since there a
    400 means wrong or missing credentials.
    """
    status = response.status
    if 200 <= status < 300:
        # The rule (contract: a success body is {"success": true, ...}): anything else, a
        # "success" that is false, "false" or 0, a JSON array, an HTML page, an empty body,
        # is not a success, and its records are never counted accepted.
        if isinstance(body, dict) and body.get("success") is True:
            return None
        cls: type[APIStatusError] = AuthenticationError if auth else UnsuccessfulResponseError
        details = _error_details(body)
        if not isinstance(body, dict):
            details["message"] = (f"the answer is not a JSON object with \"success\": true "
                                  f"(got {_describe(body)})")
        return cls(status=status, body=body, **details)
    details = _error_details(body)
    if 300 <= status < 400:
        location = _origin(response.headers.get("Location"))
        details["message"] = (f"redirected to {location or 'an unknown location'}; redirects "
                              "are not followed (check auth_url and ingest_url)")
        return RedirectError(status=status, body=None, location=location, **details)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get(HEADER_RETRY_AFTER))
        return RateLimitedError(status=status, body=body, retry_after=retry_after, **details)
    if status >= 500:
        return ServerError(status=status, body=body, **details)
    if auth and 400 <= status < 500:
        return AuthenticationError(status=status, body=body, **details)
    cls = _STATUS_ERRORS.get(status, APIStatusError)
    return cls(status=status, body=body, **details)


def _error_details(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        try:
            err = ErrorBody.model_validate(body)
        except ValidationError:
            return {"message": None, "error_code": None, "request_id": request_id_of(body)}
        return {"error_code": err.error_code, "message": err.message, "request_id": err.request_id}
    if isinstance(body, str) and body:
        return {"message": body[:200], "error_code": None, "request_id": None}
    return {"message": None, "error_code": None, "request_id": None}


def _describe(body: Any) -> str:
    if body is None:
        return "an empty body"
    if isinstance(body, str):
        return f"text {body[:60]!r}"
    return f"a JSON {type(body).__name__}"


def _origin(location: str | None) -> str | None:
    """A redirect target's scheme, host and port: never its path or query (which may carry
    anything)."""
    if not location:
        return None
    try:
        url = URL(location.strip())
    except (ValueError, TypeError):
        return None
    if url.scheme and url.scheme not in ("http", "https"):
        return f"a {url.scheme}: location"
    if not url.host:
        return "a relative location on the same server"
    try:
        origin = url.origin() if url.scheme else URL("http:" + str(url)).origin()
    except ValueError:
        return None
    return str(origin) if url.scheme else str(origin).replace("http://", "//", 1)
