"""The quota scheduler: policies (``_windows``), the FIFO of slots (``_scheduler``) and
persistence (``_store``)."""

from ._scheduler import Policy, QuotaScheduler, Reservation
from ._store import QuotaStore, SQLiteQuotaStore
from ._windows import SlidingWindow, TokenBucketWindow

__all__ = [
    "Policy",
    "QuotaScheduler",
    "QuotaStore",
    "Reservation",
    "SQLiteQuotaStore",
    "SlidingWindow",
    "TokenBucketWindow",
]
