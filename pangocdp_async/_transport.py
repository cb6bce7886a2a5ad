"""The aiohttp seam. Everything above it sees :class:`RawResponse` or one of our exceptions.

aiohttp's exceptions are translated to ours in exactly one function, :func:`map_transport_error`,
whose completeness over aiohttp's exception classes is checked by a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import aiohttp
from yarl import URL

from ._exceptions import APIConnectionError, APITimeoutError

__all__ = ["AiohttpTransport", "RawResponse", "Transport", "map_transport_error"]


class RawResponse(NamedTuple):
    """An HTTP answer, fully read."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """What the client needs from HTTP: one POST of pre-encoded bytes."""

    async def post(
        self,
        url: str | URL,
        *,
        body: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> RawResponse:
        """Send ``body`` to ``url``; the answer, whatever its status (a connection that fails
        raises :class:`APIConnectionError`)."""
        ...


class AiohttpTransport:
    """:class:`Transport` over an :class:`aiohttp.ClientSession` (owned or borrowed)."""

    __slots__ = ("_session", "_timeout")

    def __init__(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> None:
        self._session = session
        self._timeout = timeout

    async def post(
        self,
        url: str | URL,
        *,
        body: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
    ) -> RawResponse:
        try:
            # Never follow a redirect: aiohttp would re-send a POST as GET (and count the 200
            # of that as success), or a 307 would carry the credentials to another origin.
            async with self._session.post(
                url, data=body, headers=headers, params=params, timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                data = await resp.read()
                return RawResponse(resp.status, resp.headers, data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise map_transport_error(exc) from None


def map_transport_error(exc: BaseException) -> APIConnectionError:
    """Translate an aiohttp / asyncio / socket error into ours.

    The message names the error class and aiohttp's text, which carries the host but never the
    request headers (where the credentials travel). The original is not chained, so a traceback
    cannot print the request it belonged to.
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # Ordered from specific to general: aiohttp's timeout classes also derive from the
    # connection classes.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"timed out connecting ({detail})", maybe_sent=False)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return APITimeoutError(f"request timed out ({detail})", maybe_sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # DNS failure, refused connection, TLS handshake or certificate failure: nothing sent.
        return APIConnectionError(f"could not connect ({detail})", maybe_sent=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return APIConnectionError(f"invalid URL ({detail})", maybe_sent=False)
    return APIConnectionError(f"connection failed ({detail})", maybe_sent=True)
