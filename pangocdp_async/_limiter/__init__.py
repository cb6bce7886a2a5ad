"""The quota schedulers: policies (``_windows``), the local FIFO of slots (``_scheduler``),
persistence (``_store``), and one quota shared by many processes (``_shared``, the backends'
contract in ``_backend``, ``_sqlite`` on one host, ``_redis`` across hosts)."""

from ._backend import QuotaBackend, QuotaBackendError, QuotaConfigError
from ._interface import Limiter
from ._redis import RedisQuotaBackend
from ._scheduler import Policy, QuotaScheduler, Reservation
from ._shared import SharedQuotaScheduler
from ._spec import QUOTA_SPEC_HELP, limiter_from_spec
from ._sqlite import SQLiteQuotaBackend
from ._store import QuotaStore, SQLiteQuotaStore
from ._windows import SlidingWindow, TokenBucketWindow

__all__ = [
    "QUOTA_SPEC_HELP",
    "Limiter",
    "Policy",
    "QuotaBackend",
    "QuotaBackendError",
    "QuotaConfigError",
    "QuotaScheduler",
    "QuotaStore",
    "RedisQuotaBackend",
    "Reservation",
    "SQLiteQuotaBackend",
    "SQLiteQuotaStore",
    "SharedQuotaScheduler",
    "SlidingWindow",
    "TokenBucketWindow",
    "limiter_from_spec",
]
