"""Counters behind ``client.stats``. Updated on the hot path, so kept to plain arithmetic."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._constants import LATENCY_SAMPLES
from ._results import ClientStats

__all__ = ["StatsRecorder"]

_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class StatsRecorder:
    __slots__ = (
        "_clock",
        "_first",
        "_latencies",
        "accepted",
        "by_class",
        "in_flight",
        "limiter",
        "queue_depth",
        "rate_limited",
        "retries",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first: float | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.by_class = {"2xx": 0, "4xx": 0, "5xx": 0, "error": 0}
        self.rate_limited = 0
        self.retries = 0
        self.in_flight = 0
        self.accepted = 0
        #: Functions that report the depth of each running pipeline's queue.
        self.queue_depth: set[Callable[[], int]] = set()
        #: The client's limiter, for the quota backend's health.
        self.limiter: Any = None

    def started(self) -> None:
        if self._first is None:
            self._first = self._clock()
        self.in_flight += 1

    def answered(self, status: int, latency: float, entries: int) -> None:
        self.in_flight -= 1
        key = _CLASSES.get(status // 100, "error")
        self.by_class[key] = self.by_class.get(key, 0) + 1
        self._latencies.append(latency)
        if 200 <= status < 300:
            self.accepted += entries
        elif status == 429:
            self.rate_limited += 1

    def failed(self) -> None:
        self.in_flight -= 1
        self.by_class["error"] += 1

    def snapshot(self) -> ClientStats:
        ordered = sorted(self._latencies)

        def pct(p: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

        elapsed = self._clock() - self._first if self._first is not None else 0.0
        return ClientStats(
            requests=dict(self.by_class),
            rate_limited=self.rate_limited,
            retries=self.retries,
            in_flight=self.in_flight,
            queue_depth=sum(depth() for depth in self.queue_depth),
            records_accepted=self.accepted,
            records_per_s=self.accepted / elapsed if elapsed > 0 else 0.0,
            latency_p50_s=pct(0.50),
            latency_p99_s=pct(0.99),
            **self._quota(),
        )

    def _quota(self) -> dict[str, Any]:
        limiter = self.limiter
        if limiter is None:
            return {}
        return {"quota_backend": limiter.backend_name,
                "quota_backend_errors": limiter.backend_errors,
                "quota_backend_down": limiter.backend_down_since is not None}
