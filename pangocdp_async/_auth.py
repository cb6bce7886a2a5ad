"""Tokens: a cache that refreshes before expiry, one auth call at a time.

Expiry is measured on the client's monotonic clock from the moment the auth call started, using
the lifetime the server states (``expiredAfter``), so neither side's wall clock matters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import orjson
from pydantic import SecretStr, ValidationError

from ._constants import TOKEN_REFRESH_MARGIN_S
from ._exceptions import APIStatusError, AuthenticationError, RedirectError
from ._models import AuthResponse
from ._responses import error_for, parse_body
from ._transport import Transport

__all__ = ["StaticToken", "TokenManager", "TokenSource"]

logger = logging.getLogger("pangocdp_async")

# doc: the example token lives 30 minutes; used when an auth answer states no lifetime.
_FALLBACK_LIFETIME_S = 1800.0


class TokenSource(Protocol):
    """Where the ingest call gets its ``TOKEN`` header from."""

    @property
    def can_refresh(self) -> bool: ...

    async def get(self) -> str: ...

    async def refresh(self, stale: str) -> str: ...


class StaticToken:
    """A token the caller obtained elsewhere; it cannot be refreshed."""

    __slots__ = ("_token",)
    can_refresh = False

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def get(self) -> str:
        return self._token.get_secret_value()

    async def refresh(self, stale: str) -> str:
        raise AuthenticationError(
            status=401,
            message="the static token was refused and cannot be refreshed "
            "(pass username and group_key to let the client authenticate)",
        )

    def __repr__(self) -> str:
        return "StaticToken(token='**********')"


class TokenManager:
    """Caches the token from the auth API; concurrent callers share a single refresh."""

    can_refresh = True

    def __init__(
        self,
        *,
        transport: Transport,
        auth_url: str,
        username: str,
        api_key: SecretStr,
        group_key: SecretStr,
        clock: Callable[[], float],
        refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S,
    ) -> None:
        self._transport = transport
        self._auth_url = auth_url
        self._username = username
        self._api_key = api_key
        self._group_key = group_key
        self._clock = clock
        self._margin = refresh_margin_s
        self._token: str | None = None
        self._expires_at = float("-inf")
        self._inflight: asyncio.Future[str] | None = None
        self.auth_calls = 0

    def __repr__(self) -> str:
        state = "valid" if self._valid() else "none"
        return (
            f"TokenManager(username={self._username!r}, api_key='**********', "
            f"group_key='**********', token={state}, auth_calls={self.auth_calls})"
        )

    def _valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at

    async def get(self) -> str:
        if self._valid():
            assert self._token is not None
            return self._token
        return await self._single_flight()

    async def refresh(self, stale: str) -> str:
        """A token other than ``stale`` (which the server refused)."""
        if self._token is not None and self._token != stale and self._valid():
            return self._token  # somebody refreshed already
        self._expires_at = float("-inf")
        return await self._single_flight()

    async def _single_flight(self) -> str:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._authenticate())
            self._inflight.add_done_callback(self._clear_inflight)
        # shield: one cancelled caller must not cancel the auth call the others wait for.
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, fut: asyncio.Future[str]) -> None:
        if self._inflight is fut:
            self._inflight = None
        if not fut.cancelled():
            fut.exception()  # mark retrieved: every waiter already got it

    async def _authenticate(self) -> str:
        started = self._clock()
        self.auth_calls += 1
        body = orjson.dumps(
            {
                "username": self._username,
                "apiKey": self._api_key.get_secret_value(),
                "cdpGKey": self._group_key.get_secret_value(),
            }
        )
        response = await self._transport.post(
            self._auth_url, body=body, headers={"Content-Type": "application/json"}
        )
        parsed = parse_body(response.body)
        error = error_for(response, parsed, auth=True)
        if error is not None:
            error = _scrubbed(error, parsed)  # a failed answer may still carry a token
            logger.warning("authentication failed: %s", error)
            raise error
        try:
            answer = AuthResponse.model_validate(parsed)
        except ValidationError:
            raise AuthenticationError(
                status=response.status,
                message="the auth answer carries no token",
            ) from None
        if not answer.token.get_secret_value():
            raise AuthenticationError(status=response.status,
                                      message="the auth answer carries an empty token")
        lifetime = answer.lifetime_s()
        if lifetime is None or lifetime <= 0:
            lifetime = _FALLBACK_LIFETIME_S  # absent or nonsense: do not re-auth every request
        # Short-lived tokens (tests) keep at least half their life.
        margin = min(self._margin, lifetime / 2)
        self._token = answer.token.get_secret_value()
        self._expires_at = started + lifetime - margin
        logger.debug("authenticated; token valid for %.0f s", lifetime)
        return self._token


def _scrubbed(error: APIStatusError, body: object) -> APIStatusError:
    """The same error without the answer's body, whose text or fields could carry a token
    anywhere: only the status, ``errorCode``, ``message`` and request id are kept (a non-JSON
    answer keeps none of its text)."""
    if isinstance(error, RedirectError):
        return error  # its message is ours, from the target's origin only
    message = error.message if isinstance(body, dict) else "the auth answer is not JSON"
    if message and "token" in message.lower():
        message = "(a message mentioning the token, withheld)"
    return type(error)(status=error.status, error_code=error.error_code, message=message,
                       request_id=error.request_id)
