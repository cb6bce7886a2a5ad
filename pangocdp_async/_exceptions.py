"""The one exception tree of pangocdp-async.

::

    PangoCDPError
     ├── RequestValidationError        bad input, raised before any network I/O
     ├── APIStatusError                the server answered with an error
     │    ├── BadRequestError          400
     │    ├── AuthenticationError      401, or the auth call failed
     │    ├── RateLimitedError         429 (retriable; ``retry_after`` in seconds)
     │    │    └── QuotaWaitError      not sent: the quota scheduler would wait past the budget
     │    ├── ServerError              5xx (retriable)
     │    ├── RedirectError            3xx: never followed (``location`` is the target's origin)
     │    └── UnsuccessfulResponseError  2xx whose body is not ``{"success": true, ...}``
     ├── APIConnectionError            no usable answer (retriable)
     │    └── APITimeoutError          the request timed out
     └── PipelineError                 a bulk run stopped early (``report`` says what happened)
          └── RecordSourceError        the records' iterable raised (the error is ``__cause__``)

Whether an error is worth retrying is a property of its class (``retriable``), not of lists kept
elsewhere. ``APIConnectionError.maybe_sent`` says whether the request may have reached the server,
which decides whether a retry can produce a duplicate.

No exception message carries a credential: messages are built from the server's error code and
message, the HTTP status and the request id only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._results import IngestReport

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "PangoCDPError",
    "PipelineError",
    "QuotaWaitError",
    "RateLimitedError",
    "RecordSourceError",
    "RedirectError",
    "RequestValidationError",
    "ServerError",
    "UnsuccessfulResponseError",
]


class PangoCDPError(Exception):
    """Base class of every error this library raises."""

    retriable: ClassVar[bool] = False


class RequestValidationError(PangoCDPError, ValueError):
    """The request was refused before any I/O: the message names the entry index and field.

    ``index`` is the position of the offending entry in the request (``None`` for envelope
    fields) and ``field`` the dotted path inside it.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.index = index
        self.field = field


class APIStatusError(PangoCDPError):
    """The server answered with an error status (or a 200 that says it failed)."""

    def __init__(
        self,
        *,
        status: int,
        error_code: str | None = None,
        message: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        self.request_id = request_id
        self.body = body
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.error_code:
            parts.append(self.error_code)
        text = " ".join(parts)
        if self.message:
            text += f": {self.message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text


class BadRequestError(APIStatusError):
    """HTTP 400: the server refused the envelope or an entry; sending it again will not help."""


class AuthenticationError(APIStatusError):
    """HTTP 401 on ingest after one token refresh, or a failed call to the auth API."""


class RateLimitedError(APIStatusError):
    """HTTP 429. ``retry_after`` is the server's hint in seconds (``0.0`` means "under a second",
    never "retry now"), or ``None`` when the header was absent or unreadable."""

    retriable = True

    def __init__(self, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(**kwargs)


class QuotaWaitError(RateLimitedError):
    """Nothing was sent: the quota scheduler's next slot for this request (after a 429 pause, or
    when the windows are spent) lies further ahead than the request's budget allows.

    ``retry_after`` is the scheduler's estimate, in seconds, of when a slot frees up. ``status``
    is 429 because the wait comes from the rate limit, but no HTTP request was made.
    """

    retriable = False

    def __init__(self, retry_after: float, budget: float) -> None:
        super().__init__(
            retry_after=retry_after,
            status=429,
            error_code="QUOTA_WAIT",
            message=(
                f"not sent: the quota scheduler's next slot is {retry_after:.1f} s away, "
                f"beyond this request's budget of {budget:.1f} s"
            ),
        )
        self.budget = budget


class ServerError(APIStatusError):
    """HTTP 5xx."""

    retriable = True


class UnsuccessfulResponseError(APIStatusError):
    """A 2xx whose body is not a JSON object with ``"success": true``: the server said it
    failed, or the answer is not the server's (an HTML page from a proxy or captive portal, an
    empty body). Its records are not counted as accepted."""


class RedirectError(APIStatusError):
    """A 3xx answer. Redirects are never followed (a POST would be re-sent as GET, or the
    credentials carried elsewhere); ``location`` is the target's origin (scheme, host and port,
    never its path or query), or ``None``."""

    def __init__(self, *, location: str | None = None, **kwargs: Any) -> None:
        self.location = location
        super().__init__(**kwargs)


class APIConnectionError(PangoCDPError):
    """No usable answer: the connection failed, broke, or the response could not be read.

    ``maybe_sent`` is ``False`` only when the request certainly never left (for example the
    connection could not be opened), so a retry cannot create a duplicate.
    """

    retriable = True

    def __init__(self, message: str, *, maybe_sent: bool = True) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class APITimeoutError(APIConnectionError):
    """The request did not complete within the configured timeout."""


class PipelineError(PangoCDPError):
    """A bulk run (``ingest_many`` or a stream) stopped early: a sender crashed (a bug, or an
    argument that only fails when a request is sent). ``report`` accounts for every record read:
    accepted, failed, unsent or in doubt."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


class RecordSourceError(PipelineError):
    """The records' iterable raised; reading stopped, what was read is accounted for in
    ``report``, and the original error is ``__cause__``."""
