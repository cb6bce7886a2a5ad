"""pangocdp-async: the asyncio client for PangoCDP's Data Ingestion API."""

from ._bulk import IngestStream
from ._client import PangoCDPClient
from ._config import DOCUMENTED_LIMITS, Margin, RateLimit
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    PangoCDPError,
    PipelineError,
    QuotaWaitError,
    RateLimitedError,
    RecordSourceError,
    RequestValidationError,
    ServerError,
    UnsuccessfulResponseError,
)
from ._limiter import Policy, QuotaScheduler, QuotaStore, Reservation, SQLiteQuotaStore
from ._results import (
    ClientStats,
    InDoubtRecord,
    IngestReport,
    IngestResult,
    RecordFailure,
    UnsentRecord,
)
from ._retry import RetryPolicy
from ._transport import RawResponse, Transport

__all__ = [
    "DOCUMENTED_LIMITS",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientStats",
    "InDoubtRecord",
    "IngestReport",
    "IngestResult",
    "IngestStream",
    "Margin",
    "PangoCDPClient",
    "PangoCDPError",
    "PipelineError",
    "Policy",
    "QuotaScheduler",
    "QuotaStore",
    "QuotaWaitError",
    "RateLimit",
    "RateLimitedError",
    "RawResponse",
    "RecordFailure",
    "RecordSourceError",
    "RequestValidationError",
    "Reservation",
    "RetryPolicy",
    "SQLiteQuotaStore",
    "ServerError",
    "Transport",
    "UnsentRecord",
    "UnsuccessfulResponseError",
]
__version__ = "0.1.0.dev0"
