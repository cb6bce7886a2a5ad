"""The per-window bookkeeping of the two policies. Synchronous and pure: time is an argument.

Both classes answer the same questions for one window (``earliest``: when may the next send go;
``record``: a send happens at ``t``) so the scheduler can reserve across all windows in one step.
Times passed to ``record`` never decrease.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from typing import Any, Protocol

from .._config import Margin, RateLimit

__all__ = ["SlidingWindow", "TokenBucketWindow", "Window"]

# Windows up to this capacity keep one timestamp per send; larger ones count sends in buckets.
EXACT_MAX_CAPACITY = 1_000
# A bucketed window is cut into this many buckets: each send is counted at the *end* of its
# bucket (later than it happened, so the count errs on the safe side) and costs at most
# 1/BUCKETS_PER_WINDOW of the window's throughput.
BUCKETS_PER_WINDOW = 1_000
# Compact the lists once this many expired entries sit at their front.
_COMPACT_AFTER = 4_096

_NEG_INF = float("-inf")


class Window(Protocol):
    limit: RateLimit
    capacity: int
    span: float

    def earliest(self) -> float: ...
    def record(self, t: float, n: int = 1) -> None: ...
    def remaining(self, now: float, lookback: float = 0.0) -> int: ...
    def used(self, now: float) -> int: ...
    def drain(self, now: float) -> None: ...
    def add_phantoms(self, t: float, n: int) -> None: ...
    def export(self, to_wall: float) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any], to_local: float) -> None: ...


class SlidingWindow:
    """At most ``capacity`` sends in any interval of ``span`` seconds (period plus margin).

    A new send at ``s`` is allowed once the ``capacity``-th most recent send is ``span`` old.
    That rule is safe against a Bucket4j bucket at any phase, greedy or interval: in both, a
    server token spent at time ``t`` is back by ``t + period`` at the latest.

    Storage: parallel lists of send times (or bucket end times) and *cumulative* send counts, so
    "the capacity-th most recent send" and "sends in (a, b]" are each one bisection.
    """

    __slots__ = ("_base", "_cum", "_head", "_times", "bucket", "capacity", "limit", "span")

    def __init__(self, limit: RateLimit, margin: Margin) -> None:
        self.limit = limit
        self.capacity = limit.max_requests
        self.span = margin.widen(limit.period)
        self.bucket = (
            0.0 if self.capacity <= EXACT_MAX_CAPACITY else limit.period / BUCKETS_PER_WINDOW
        )
        self._times: list[float] = []
        self._cum: list[int] = []
        self._head = 0  # entries before it have left the window
        self._base = 0  # cumulative count just before _head

    def __repr__(self) -> str:
        return f"SlidingWindow({self.capacity}/{self.limit.period:g}s, entries={self._live()})"

    def _live(self) -> int:
        return len(self._times) - self._head

    def _key(self, t: float) -> float:
        b = self.bucket
        if b == 0.0:
            return t
        return math.ceil(t / b) * b

    def earliest(self) -> float:
        cum = self._cum
        if not cum or cum[-1] - self._base < self.capacity:
            return _NEG_INF
        i = bisect_left(cum, cum[-1] - self.capacity + 1, self._head)
        return self._times[i] + self.span

    def record(self, t: float, n: int = 1) -> None:
        key = self._key(t)
        times = self._times
        if len(times) > self._head and times[-1] >= key:
            # Same bucket (or a phantom placed at the tail): merge.
            self._cum[-1] += n
        else:
            times.append(key)
            self._cum.append((self._cum[-1] if self._cum else self._base) + n)

    def expire(self, now: float) -> None:
        i = bisect_right(self._times, now - self.span, self._head)
        if i > self._head:
            self._base = self._cum[i - 1]
            self._head = i
            if i >= _COMPACT_AFTER and 2 * i >= len(self._times):
                del self._times[:i]
                del self._cum[:i]
                self._head = 0

    def _count_until(self, t: float) -> int:
        # A bucketed send is filed under its bucket's end, which may lie past ``t``.
        j = bisect_right(self._times, t + self.bucket, self._head)
        return (self._cum[j - 1] if j > self._head else self._base) - self._base

    def used(self, now: float) -> int:
        """Sends counted in (now - span, now]."""
        self.expire(now)
        return self._count_until(now)

    def remaining(self, now: float, lookback: float = 0.0) -> int:
        """Capacity left at ``now`` counting every send since ``now - span - lookback``."""
        self.expire(now - lookback)
        return self.capacity - self._count_until(now)

    def drain(self, now: float) -> None:
        """Assume the server's window is exhausted at ``now`` and refilling steadily.

        The history becomes the union of what it was and ``capacity`` phantom sends spread
        evenly over the last period, so the next send is allowed ``period / capacity`` after now
        (plus margin) and the pace stays at the window's long-run rate until it slides out.
        """
        self.expire(now)
        pairs = self._pairs()
        period = self.limit.period
        start = now - period
        step = period / self.capacity
        phantoms: dict[float, int] = {}
        if self.bucket == 0.0:
            for k in range(1, self.capacity + 1):
                phantoms[start + k * step] = 1
        else:
            first = math.ceil(start / self.bucket)
            last = math.ceil(now / self.bucket)
            done = 0
            for j in range(first, last + 1):
                key = j * self.bucket
                total = min(self.capacity, max(0, math.floor((key - start) / step)))
                if total > done:
                    phantoms[key] = total - done
                    done = total
            if done < self.capacity:
                key = last * self.bucket
                phantoms[key] = phantoms.get(key, 0) + self.capacity - done
        for t, n in pairs:
            phantoms[t] = phantoms.get(t, 0) + n
        self._reset(sorted(phantoms.items()))

    def add_phantoms(self, t: float, n: int) -> None:
        """Count ``n`` sends that others made (or that went unrecorded) at ``t`` or later."""
        if n > 0:
            tail = self._times[-1] if self._live() else t
            self.record(max(t, tail), n)

    def _pairs(self) -> list[tuple[float, int]]:
        out = []
        prev = self._base
        for i in range(self._head, len(self._times)):
            out.append((self._times[i], self._cum[i] - prev))
            prev = self._cum[i]
        return out

    def _reset(self, pairs: list[tuple[float, int]]) -> None:
        self._times = []
        self._cum = []
        self._head = 0
        self._base = 0
        total = 0
        for t, n in pairs:
            total += n
            self._times.append(t)
            self._cum.append(total)

    def export(self, to_wall: float) -> dict[str, Any]:
        return {
            "max_requests": self.capacity,
            "period": self.limit.period,
            "sends": [[t + to_wall, n] for t, n in self._pairs()],
        }

    def restore(self, state: dict[str, Any], to_local: float) -> None:
        if "sends" in state:
            self._reset([(float(t) + to_local, int(n)) for t, n in state["sends"]])
        else:  # saved by the token-bucket policy: its deficit, counted at the save time
            used = self.capacity - math.floor(float(state["tokens"]))
            self._reset([])
            self.add_phantoms(float(state["at"]) + to_local, max(0, used))


class TokenBucketWindow:
    """Mirrors one Bucket4j bandwidth with greedy refill: ``capacity`` tokens, refilled
    continuously over ``span`` seconds (period plus margin, so the client refills slower than
    the server). Starts full, like the server's bucket."""

    __slots__ = ("_t", "_tokens", "capacity", "limit", "rate", "span")

    def __init__(self, limit: RateLimit, margin: Margin) -> None:
        self.limit = limit
        self.capacity = limit.max_requests
        self.span = margin.widen(limit.period)
        self.rate = self.capacity / self.span
        self._tokens = float(self.capacity)
        self._t = _NEG_INF

    def __repr__(self) -> str:
        return (
            f"TokenBucketWindow({self.capacity}/{self.limit.period:g}s, "
            f"tokens={self._tokens:.2f})"
        )

    def _tokens_at(self, t: float) -> float:
        if t <= self._t:
            return self._tokens
        return min(float(self.capacity), self._tokens + (t - self._t) * self.rate)

    def earliest(self) -> float:
        if self._tokens >= 1.0:
            return self._t
        return self._t + (1.0 - self._tokens) / self.rate

    def record(self, t: float, n: int = 1) -> None:
        self._tokens = self._tokens_at(t) - n
        self._t = max(t, self._t)

    def used(self, now: float) -> int:
        return self.capacity - math.floor(self._tokens_at(now))

    def remaining(self, now: float, lookback: float = 0.0) -> int:
        return math.floor(self._tokens_at(now))

    def drain(self, now: float) -> None:
        t = max(now, self._t)
        self._tokens = min(0.0, self._tokens_at(t))
        self._t = t

    def add_phantoms(self, t: float, n: int) -> None:
        if n > 0:
            self.record(max(t, self._t), n)

    def export(self, to_wall: float) -> dict[str, Any]:
        at = self._t if math.isfinite(self._t) else None
        return {
            "max_requests": self.capacity,
            "period": self.limit.period,
            "tokens": self._tokens,
            "at": None if at is None else at + to_wall,
        }

    def restore(self, state: dict[str, Any], to_local: float) -> None:
        self._tokens = float(self.capacity)
        self._t = _NEG_INF
        if "tokens" in state:
            if state.get("at") is not None:
                self._tokens = float(state["tokens"])
                self._t = float(state["at"]) + to_local
            return
        # saved by the sliding policy: every send still in the window is a spent token
        for t, n in state["sends"]:
            self.record(float(t) + to_local, int(n))
