"""pangocdp-async: the asyncio client for PangoCDP's Data Ingestion API."""

from ._client import PangoCDPClient
from ._config import DOCUMENTED_LIMITS, Margin, RateLimit
from ._exceptions import (
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
from ._limiter import Policy, QuotaScheduler, QuotaStore, Reservation, SQLiteQuotaStore
from ._results import IngestResult
from ._transport import RawResponse, Transport

__all__ = [
    "DOCUMENTED_LIMITS",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "IngestResult",
    "Margin",
    "PangoCDPClient",
    "PangoCDPError",
    "Policy",
    "QuotaScheduler",
    "QuotaStore",
    "RateLimit",
    "RateLimitedError",
    "RawResponse",
    "RequestValidationError",
    "Reservation",
    "SQLiteQuotaStore",
    "ServerError",
    "Transport",
    "UnsuccessfulResponseError",
]
__version__ = "0.1.0.dev0"
