"""What a call returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["IngestResult"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The outcome of one accepted ingest request.

    ``body`` is the parsed JSON body (the 200 body is not public: usually ``{"success": true}``),
    ``attempts`` counts HTTP requests made (2 after a token refresh), ``latency_s`` is the time of
    the last attempt, and ``rate_limit_remaining`` is the server's ``X-Rate-Limit-Remaining``.
    """

    status: int
    body: Any
    request_id: str | None
    attempts: int
    latency_s: float
    entries: int
    rate_limit_remaining: int | None = None
