"""pangocdp-async: the asyncio client for PangoCDP's Data Ingestion API."""

import logging

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
    RedirectError,
    RequestValidationError,
    ServerError,
    UnsuccessfulResponseError,
)
from ._limiter import (
    Limiter,
    Policy,
    QuotaBackendError,
    QuotaConfigError,
    QuotaScheduler,
    QuotaStore,
    RedisQuotaBackend,
    Reservation,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
    SQLiteQuotaStore,
    limiter_from_spec,
)
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
    "Limiter",
    "Margin",
    "PangoCDPClient",
    "PangoCDPError",
    "PipelineError",
    "Policy",
    "QuotaBackendError",
    "QuotaConfigError",
    "QuotaScheduler",
    "QuotaStore",
    "QuotaWaitError",
    "RateLimit",
    "RateLimitedError",
    "RawResponse",
    "RecordFailure",
    "RecordSourceError",
    "RedirectError",
    "RedisQuotaBackend",
    "RequestValidationError",
    "Reservation",
    "RetryPolicy",
    "SQLiteQuotaBackend",
    "SQLiteQuotaStore",
    "ServerError",
    "SharedQuotaScheduler",
    "Transport",
    "UnsentRecord",
    "UnsuccessfulResponseError",
    "limiter_from_spec",
]
__version__ = "0.1.0"

# A library logs, and the application decides where that goes: without this, warnings would
# reach stderr through logging's last-resort handler in an application that set up nothing.
logging.getLogger("pangocdp_async").addHandler(logging.NullHandler())
