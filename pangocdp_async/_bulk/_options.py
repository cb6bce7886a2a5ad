"""The options of a bulk run, in one place: defaults, validation, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    MAX_ENTRIES_PER_REQUEST,
)
from .._results import IngestReport, RecordFailure
from .._retry import RetryPolicy
from .._validate import check_bool, check_int, check_seconds

__all__ = ["MAX_CONCURRENCY", "BulkOptions", "DeadLetter", "ProgressCallback"]

#: More senders than this cannot help (the documented windows allow 50 requests a second) and
#: each costs memory up front.
MAX_CONCURRENCY = 1_000

#: Where failed records go: a path (JSON Lines, appended) or a callable taking each failure
#: (it may be a coroutine function).
DeadLetter = str | Path | Callable[[RecordFailure], Any]
#: Called with the report after each batch (it may be a coroutine function).
ProgressCallback = Callable[[IngestReport], Any]


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """What ``ingest_many`` and ``stream`` share, checked once when the call is made.

    ``linger`` (seconds a partial batch may wait for more records) and ``max_pending`` (records
    a stream buffers before ``send`` waits) apply to streams; ``ingest_many`` reads as fast as
    batches leave.
    """

    retry: RetryPolicy
    init_data: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = MAX_ENTRIES_PER_REQUEST
    max_batch_bytes: int | None = None
    dead_letter: DeadLetter | None = None
    on_progress: ProgressCallback | None = None
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    linger: float | None = None
    max_pending: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        check_bool("init_data", self.init_data)
        check_int("concurrency", self.concurrency, low=1, high=MAX_CONCURRENCY)
        check_int("batch_size", self.batch_size, low=1, high=MAX_ENTRIES_PER_REQUEST)
        if self.max_batch_bytes is not None:
            check_int("max_batch_bytes", self.max_batch_bytes, low=1)
        if self.max_pending is not None:
            check_int("max_pending", self.max_pending, low=1)
        check_seconds("shutdown_timeout", self.shutdown_timeout, allow_zero=True)
        if self.linger is not None:
            check_seconds("linger", self.linger, allow_zero=False)
        if self.on_progress is not None and not callable(self.on_progress):
            raise TypeError(f"on_progress must be callable, got {self.on_progress!r}")
        if self.dead_letter is not None and not (
            callable(self.dead_letter) or isinstance(self.dead_letter, (str, Path))
        ):
            raise TypeError(
                "dead_letter must be a path or a callable taking each RecordFailure, got "
                f"{type(self.dead_letter).__name__}"
            )

    @property
    def pending_limit(self) -> int:
        """A stream's ``max_pending``, by default one batch per sender."""
        if self.max_pending is not None:
            return self.max_pending
        return self.batch_size * self.concurrency
