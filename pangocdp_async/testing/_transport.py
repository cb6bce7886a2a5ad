"""InProcessTransport: a :class:`~pangocdp_async.Transport` without sockets, for tests and
benchmarks that need no server (and for virtual time, where sockets would see time rush by)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from multidict import CIMultiDict
from yarl import URL

from .._transport import RawResponse

__all__ = ["InProcessTransport", "Respond", "ok"]

_OK_BODY = b'{"success":true}'

#: Decides the answer to the n-th request (1-based) with this body: a response, or an
#: exception to raise (for example :class:`APIConnectionError`).
#: What an :class:`InProcessTransport` calls for each request: ``(request number, body)`` to a
#: response, or an exception to raise.
Respond = Callable[[int, bytes], "RawResponse | BaseException"]


def ok(n: int, body: bytes) -> RawResponse:
    """Every request accepted: 200 ``{"success": true}``."""
    return RawResponse(200, CIMultiDict(), _OK_BODY)


class InProcessTransport:
    """Answers each POST with ``respond(n, body)`` after ``latency`` seconds of the loop's
    clock (so it runs on virtual time too). ``requests`` counts POSTs; ``accepted`` holds the
    entries of every request answered 2xx, in order, if ``keep_entries``.

    >>> client = PangoCDPClient(api_key="k", token="t", transport=InProcessTransport())
    """

    def __init__(self, respond: Respond = ok, *, latency: float = 0.0,
                 keep_entries: bool = True) -> None:
        self.respond = respond
        self.latency = latency
        self.keep_entries = keep_entries
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []

    async def post(self, url: str | URL, *, body: bytes, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None) -> RawResponse:
        """Answer with ``respond(request number, body)`` after ``latency`` seconds."""
        self.requests += 1
        n = self.requests
        if self.latency:
            await asyncio.sleep(self.latency)
        answer = self.respond(n, body)
        if isinstance(answer, BaseException):
            raise answer
        if self.keep_entries and 200 <= answer.status < 300:
            self.accepted.extend(orjson.loads(body)["entries"])
        return answer
