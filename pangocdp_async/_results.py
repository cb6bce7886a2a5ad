"""What calls return: one request's result, a bulk run's report, the client's live stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._exceptions import APIStatusError, PangoCDPError, RequestValidationError

__all__ = ["ClientStats", "InDoubtRecord", "IngestReport", "IngestResult", "RecordFailure",
           "UnsentRecord"]


@dataclass(slots=True)  # not frozen: one is made per request, and frozen ones cost 3x to build
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


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """A record that was not accepted: its position in the input, the record, and why."""

    position: int
    record: Any
    error: PangoCDPError

    def to_json(self) -> dict[str, Any]:
        """The dead-letter line: the record and the error, with the server's words if any."""
        err: dict[str, Any] = {"type": type(self.error).__name__, "message": str(self.error)}
        if isinstance(self.error, APIStatusError):
            err.update(status=self.error.status, error_code=self.error.error_code,
                       server_message=self.error.message, request_id=self.error.request_id)
        elif isinstance(self.error, RequestValidationError):
            err.update(field=self.error.field)
        return {"position": self.position, "error": err, "record": self.record}


@dataclass(frozen=True, slots=True)
class UnsentRecord:
    """A record that was read but not sent because the run stopped."""

    position: int
    record: Any


@dataclass(frozen=True, slots=True)
class InDoubtRecord:
    """A record whose request may have reached the server, with no answer to say whether it was
    stored (the shutdown timeout ran out while it was in flight, or its connection broke after
    sending on the last attempt). ``error`` is the last error, if any. Sending it again may
    store it twice; not sending it may lose it."""

    position: int
    record: Any
    error: PangoCDPError | None = None


@dataclass
class IngestReport:
    """A result for every record of an ``ingest_many`` or ``stream`` run.

    Every record read ends in exactly one of four places: accepted (counted), ``failures``
    (with the error; the server's when it refused it), ``unsent`` (the run stopped before it
    was sent, so sending it again is safe) or ``in_doubt`` (it may have reached the server and
    no answer says whether it was stored). So, after any return or raise,
    ``records_accepted + records_failed + records_unsent + records_in_doubt == records_read``.
    Records from position ``records_read`` on were never read. ``requests`` counts ingest
    requests made (retries included); ``auth_failures`` the attempts that failed at the auth
    call, before any ingest request. ``possible_duplicates`` counts
    accepted records whose earlier attempt may have reached the server (a connection broke
    after sending), so the server may hold them twice. ``dead_letter_error`` is the error of a
    dead-letter sink that failed (its records are still in ``failures``). ``stopped_by`` is the
    server's refusal that stopped the run early: batch after batch refused whole for its
    envelope (a wrong object type, a source the account lacks); the rest is ``unsent``.
    """

    records_accepted: int = 0
    records_failed: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    auth_failures: int = 0
    elapsed_s: float = 0.0
    records_read: int = 0
    possible_duplicates: int = 0
    cancelled: bool = False
    failures: list[RecordFailure] = field(default_factory=list)
    unsent: list[UnsentRecord] = field(default_factory=list)
    in_doubt: list[InDoubtRecord] = field(default_factory=list)
    dead_letter_error: BaseException | None = None
    stopped_by: PangoCDPError | None = None

    @property
    def records_unsent(self) -> int:
        """Records never sent (a resumed job sends them)."""
        return len(self.unsent)

    @property
    def records_in_doubt(self) -> int:
        """Records sent without an answer: the server may or may not have stored them."""
        return len(self.in_doubt)

    @property
    def complete(self) -> bool:
        """Every record read was accepted or reported failed, and the run was not cut short."""
        return (not self.unsent and not self.in_doubt and not self.cancelled
                and self.stopped_by is None)

    def summary(self) -> str:
        """One line: records accepted, failed, unsent and in doubt, requests and time."""
        rate = self.records_accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"{self.records_accepted:,} accepted, {self.records_failed:,} failed, "
            f"{self.records_unsent:,} unsent, {self.records_in_doubt:,} in doubt of "
            f"{self.records_read:,} read; "
            f"{self.requests:,} requests, {self.retries:,} retries, {self.rate_limited} x 429; "
            f"{self.elapsed_s:.1f} s ({rate:,.0f} records/s)"
        )
        return text + (" [cancelled]" if self.cancelled else "")


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of ``client.stats``."""

    requests: dict[str, int]  # by status class: "2xx", "4xx", "5xx", "error" (no answer)
    rate_limited: int
    retries: int
    in_flight: int
    queue_depth: int
    records_accepted: int
    records_per_s: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    #: Where the quota is kept: "local", "sqlite" or "redis".
    quota_backend: str = "local"
    #: Operations on the shared quota's backend that failed (each was retried).
    quota_backend_errors: int = 0
    #: The shared quota's backend is not answering: sends wait (or use a local share).
    quota_backend_down: bool = False
