"""The per-window bookkeeping of the two policies. Synchronous and pure: time is an argument.

Both classes answer the same questions for one window, so the scheduler can check and take all
windows in one step:

- ``earliest(in_flight)``: when may one more send start, given the completed sends on record and
  ``in_flight`` sends whose answers have not come back yet (they may reach the server at any
  moment, so they count as "now" until they complete);
- ``record(t)``: a send completed at ``t`` (its answer arrived, so it reached the server at
  ``t`` at the latest). Times passed to ``record`` never decrease;
- ``fill(now)``: the server said the window is empty (a 429): model it as exactly full now,
  refilling at the window's own pace, *without* adding to what is already on record;
  ``relax(now, r)`` undoes a fill that the server's own count of remaining requests
  contradicts.

Memory is bounded whatever the run's length: expired sends are dropped on the recording path
(amortized O(1) per send), and windows above :data:`EXACT_MAX_CAPACITY` count sends in
:data:`BUCKETS_PER_WINDOW` buckets.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any, Protocol

from .._config import Margin, RateLimit

__all__ = ["BUCKETS_PER_WINDOW", "EXACT_MAX_CAPACITY", "LOOKBACK_MAX_S", "SlidingWindow",
           "TokenBucketWindow", "Window"]

# Windows up to this capacity keep one timestamp per send; larger ones count sends in buckets.
EXACT_MAX_CAPACITY = 1_000
# A bucketed window is cut into this many buckets: each send is counted at the *end* of its
# bucket (later than it happened, so the count errs on the safe side) and costs at most
# 1/BUCKETS_PER_WINDOW of the window's throughput.
BUCKETS_PER_WINDOW = 1_000
# Drop expired entries from the front of the lists once this many have piled up there (and
# they are at least half the list): amortized O(1), memory at most about twice the live part.
_COMPACT_AFTER = 1_024
# Sends stay on record this long after leaving a window, so that a server's count can be
# compared with ours over the window widened by a request's round trip (capped at this).
LOOKBACK_MAX_S = 5.0
# Saved times are whole milliseconds, rounded up (later is the safe side).
_MS = 1000.0

_NEG_INF = float("-inf")
_INF = float("inf")

Pairs = list[tuple[float, int]]


class Window(Protocol):
    limit: RateLimit
    capacity: int
    span: float

    def earliest(self, in_flight: int = 0) -> float: ...
    def record(self, t: float, n: int = 1) -> None: ...
    def expire(self, now: float) -> None: ...
    def remaining(self, now: float, lookback: float = 0.0) -> int: ...
    def used(self, now: float) -> int: ...
    def fill(self, now: float) -> None: ...
    def relax(self, now: float, server_remaining: int) -> bool: ...
    def add_phantoms(self, t: float, n: int) -> None: ...
    def entries(self) -> int: ...
    def export(self, to_wall: float) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any], to_local: float, now: float) -> None: ...


def _max_merge(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]]) -> Pairs:
    """The send history whose count over every suffix ``[x, inf)`` is the larger of ``a``'s and
    ``b``'s: what both histories together allow, without counting a send twice."""
    out: Pairs = []
    ia, ib = len(a) - 1, len(b) - 1
    sa = sb = prev = 0
    while ia >= 0 or ib >= 0:
        t = max(a[ia][0] if ia >= 0 else _NEG_INF, b[ib][0] if ib >= 0 else _NEG_INF)
        while ia >= 0 and a[ia][0] >= t:
            sa += a[ia][1]
            ia -= 1
        while ib >= 0 and b[ib][0] >= t:
            sb += b[ib][1]
            ib -= 1
        m = max(sa, sb)
        if m > prev:
            out.append((t, m - prev))
            prev = m
    out.reverse()
    return out


class SlidingWindow:
    """At most ``capacity`` sends in any interval of ``span`` seconds (period plus margin).

    A new send may start once fewer than ``capacity`` sends, in flight or completed within the
    last ``span``, would share a window with it. Completed sends are filed at their completion
    time, the latest moment they can have reached the server, so arrival jitter of any size is
    covered; that rule is safe against a Bucket4j bucket at any phase, greedy or interval: in
    both, a server token spent at time ``t`` is back by ``t + period`` at the latest.

    Storage: parallel lists of send times (or bucket end times) and *cumulative* send counts, so
    "the k-th most recent send" and "sends after x" are each one bisection.
    """

    __slots__ = ("_base", "_cum", "_fill_at", "_fill_cum", "_head", "_times", "bucket",
                 "capacity", "limit", "span", "step")

    def __init__(self, limit: RateLimit, margin: Margin) -> None:
        self.limit = limit
        self.capacity = limit.max_requests
        self.span = margin.widen(limit.period)
        self.step = self.span / self.capacity  # the window's own pace when it refills
        self.bucket = (
            0.0 if self.capacity <= EXACT_MAX_CAPACITY else limit.period / BUCKETS_PER_WINDOW
        )
        self._times: list[float] = []
        self._cum: list[int] = []
        self._head = 0  # entries before it have left the window
        self._base = 0  # cumulative count just before _head
        # A fill: the window was modeled exactly full at _fill_at; _fill_cum is the cumulative
        # count of sends on record then (sends filed after it are counted on top).
        self._fill_at = _NEG_INF
        self._fill_cum = 0

    def __repr__(self) -> str:
        return f"SlidingWindow({self.capacity}/{self.limit.period:g}s, entries={self.entries()})"

    def entries(self) -> int:
        """Entries held in memory (live or awaiting compaction)."""
        return len(self._times)

    def _key(self, t: float) -> float:
        b = self.bucket
        if b == 0.0:
            return t
        return math.ceil(t / b) * b

    def earliest(self, in_flight: int = 0) -> float:
        room = self.capacity - in_flight  # sends on record that may share the new one's window
        if room <= 0:
            return _INF  # only a completion can make room
        cum = self._cum
        total = cum[-1] if cum else self._base
        if total - self._base < room:
            due = _NEG_INF
        else:
            i = bisect_left(cum, total - room + 1, self._head)
            due = self._times[i] + self.span
        if self._fill_at > _NEG_INF:
            # Full at the fill, refilling one send per step: the k-th send after it (those on
            # record since, in flight, and this one) may go k steps after it; all phantom sends
            # are gone one span after it.
            d = self._fill_at
            after_fill = total - self._fill_cum + in_flight + 1
            due = max(due, min(d + after_fill * self.step, d + self.span))
        return due

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
        """Forget sends that left the window more than :data:`LOOKBACK_MAX_S` ago. Amortized
        O(1): each entry is passed once."""
        times = self._times
        h = self._head
        limit = now - self.span - LOOKBACK_MAX_S
        n = len(times)
        if h >= n or times[h] > limit:
            return
        h = bisect_right(times, limit, h) if n - h > 64 else h
        while h < n and times[h] <= limit:
            h += 1
        self._base = self._cum[h - 1]
        self._head = h
        if h >= _COMPACT_AFTER and 2 * h >= n:
            del times[:h]
            del self._cum[:h]
            self._head = 0

    def _count_after(self, t: float) -> int:
        """Sends on record filed after ``t``."""
        cum = self._cum
        if not cum:
            return 0
        j = bisect_right(self._times, t, self._head)
        return cum[-1] - (cum[j - 1] if j > self._head else self._base)

    def _phantoms_left(self, now: float) -> int:
        """Of a fill's ``capacity`` phantom sends, those still in the window at ``now``."""
        if self._fill_at == _NEG_INF:
            return 0
        gone = math.floor((now - self._fill_at) / self.step)
        return max(0, self.capacity - max(0, gone))

    def _count(self, now: float, since: float) -> int:
        real = self._count_after(since)
        if self._fill_at == _NEG_INF:
            return real
        if now >= self._fill_at + self.span:
            self._fill_at = _NEG_INF  # every phantom has left: the fill is over
            return real
        cum = self._cum
        after_fill = (cum[-1] if cum else self._base) - self._fill_cum
        return max(real, self._phantoms_left(now) + after_fill)

    def used(self, now: float) -> int:
        """Sends counted in (now - span, now]: on record (bucketed ones filed up to a bucket
        later), or the phantoms of a fill and the sends since, whichever is more."""
        return self._count(now, now - self.span)

    def remaining(self, now: float, lookback: float = 0.0) -> int:
        """Capacity left at ``now`` counting every send since ``now - span - lookback``
        (``lookback`` at most :data:`LOOKBACK_MAX_S`)."""
        return self.capacity - self._count(
            now, now - self.span - min(lookback, LOOKBACK_MAX_S))

    def fill(self, now: float) -> None:
        """Model the window as exactly full at ``now``, refilling at its own pace (one send per
        ``span / capacity``): the window allows, at every moment, the lesser of what its record
        allows and what a full window refilling since ``now`` would. Filling twice never counts
        more than a full window."""
        cum = self._cum
        self._fill_at = now
        self._fill_cum = cum[-1] if cum else self._base

    def relax(self, now: float, server_remaining: int) -> bool:
        """The server reports ``server_remaining`` requests left in its emptiest window: if a
        fill allows fewer now, it was too pessimistic; drop it (the record still applies, and
        the caller then charges any deficit the server's figure shows). Returns whether it did.
        """
        if self._fill_at == _NEG_INF:
            return False
        if self.capacity - self._count(now, now - self.span) >= server_remaining:
            return False
        self._fill_at = _NEG_INF
        return True

    def add_phantoms(self, t: float, n: int) -> None:
        """Count ``n`` sends that others made (or that went unrecorded) at ``t`` or later (at
        most a full window: more could only block it longer than its span)."""
        if n > 0:
            tail = self._times[-1] if len(self._times) > self._head else t
            self.record(max(t, tail), min(n, self.capacity))

    def _pairs(self) -> Pairs:
        out = []
        prev = self._base
        for i in range(self._head, len(self._times)):
            out.append((self._times[i], self._cum[i] - prev))
            prev = self._cum[i]
        return out

    def _reset(self, pairs: Sequence[tuple[float, int]]) -> None:
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
        """Bounded and compact: whole milliseconds (rounded up), delta-encoded."""
        ms: list[int] = []
        counts: list[int] = []
        prev = 0
        for t, n in self._pairs():
            tick = math.ceil((t + to_wall) * _MS)
            if ms and tick <= prev:
                counts[-1] += n
                continue
            ms.append(tick - prev)
            counts.append(n)
            prev = tick
        out: dict[str, Any] = {"max_requests": self.capacity, "period": self.limit.period,
                               "ms": ms, "n": counts}
        if self._fill_at > _NEG_INF:
            cum = self._cum
            out["fill_at"] = self._fill_at + to_wall
            out["fill_sends"] = (cum[-1] if cum else self._base) - self._fill_cum
        return out

    def restore(self, state: dict[str, Any], to_local: float, now: float) -> None:
        """Merge an export (of either policy) into the record, with every saved send moved to
        ``now`` at the latest: over every suffix the larger count wins, so loading never
        forgets a send this process made itself."""
        pairs: Pairs = []
        if "ms" in state:
            tick = 0
            for delta, n in zip(state["ms"], state["n"], strict=True):
                tick += int(delta)
                pairs.append((min(now, tick / _MS + to_local), int(n)))
        elif state.get("at") is not None:  # saved by the token-bucket policy: its deficit
            used = self.capacity - math.floor(float(state["tokens"]))
            if used > 0:
                pairs.append((min(now, float(state["at"]) + to_local), used))
        fill_at = self._fill_at
        since_fill = (self._cum[-1] if self._cum else self._base) - self._fill_cum
        mine = self._pairs()
        self._reset([])
        for t, n in _max_merge(mine, pairs):
            self.record(t, n)
        total = self._cum[-1] if self._cum else 0
        if fill_at > _NEG_INF:  # keep this process's own fill
            self._fill_at = fill_at
            self._fill_cum = max(0, total - since_fill)
        saved_fill = state.get("fill_at")
        if saved_fill is not None:
            at = min(now, float(saved_fill) + to_local)
            if at > self._fill_at:
                self._fill_at = at
                self._fill_cum = max(0, total - int(state.get("fill_sends", 0)))


class TokenBucketWindow:
    """Mirrors one Bucket4j bandwidth with greedy refill: ``capacity`` tokens, refilled
    continuously over ``span`` seconds (period plus margin, so the client refills slower than
    the server). Starts full, like the server's bucket.

    A send in flight holds a token without spending it; it is spent at completion, the latest
    moment the server can have taken it. Spending later never leaves the model with more tokens
    than the server, so arrival jitter is covered.
    """

    __slots__ = ("_filled", "_t", "_tokens", "capacity", "limit", "rate", "span")

    def __init__(self, limit: RateLimit, margin: Margin) -> None:
        self.limit = limit
        self.capacity = limit.max_requests
        self.span = margin.widen(limit.period)
        self.rate = self.capacity / self.span
        self._tokens = float(self.capacity)
        self._t = _NEG_INF
        self._filled = False

    def __repr__(self) -> str:
        return (
            f"TokenBucketWindow({self.capacity}/{self.limit.period:g}s, "
            f"tokens={self._tokens:.2f})"
        )

    def entries(self) -> int:
        return 1

    def _tokens_at(self, t: float) -> float:
        if t <= self._t:
            return self._tokens
        return min(float(self.capacity), self._tokens + (t - self._t) * self.rate)

    def earliest(self, in_flight: int = 0) -> float:
        need = 1.0 + in_flight
        if need > self.capacity:
            return _INF
        if self._tokens >= need:
            return self._t
        return self._t + (need - self._tokens) / self.rate

    def record(self, t: float, n: int = 1) -> None:
        self._tokens = self._tokens_at(t) - n
        self._t = max(t, self._t)

    def expire(self, now: float) -> None:
        return None  # one number: nothing to forget

    def used(self, now: float) -> int:
        return self.capacity - math.floor(self._tokens_at(now))

    def remaining(self, now: float, lookback: float = 0.0) -> int:
        return math.floor(self._tokens_at(now))

    def fill(self, now: float) -> None:
        t = max(now, self._t)
        self._tokens = min(0.0, self._tokens_at(t))
        self._t = t
        self._filled = True

    def relax(self, now: float, server_remaining: int) -> bool:
        if not self._filled:
            return False
        self._filled = False
        if self._tokens_at(now) >= server_remaining:
            return False
        self._tokens = float(min(self.capacity, server_remaining))
        self._t = max(now, self._t)
        return True

    def add_phantoms(self, t: float, n: int) -> None:
        if n > 0:
            self.record(max(t, self._t), min(n, self.capacity))

    def export(self, to_wall: float) -> dict[str, Any]:
        at = self._t if math.isfinite(self._t) else None
        return {
            "max_requests": self.capacity,
            "period": self.limit.period,
            "tokens": self._tokens,
            "at": None if at is None else at + to_wall,
        }

    def restore(self, state: dict[str, Any], to_local: float, now: float) -> None:
        """Take the saved bucket's tokens where they are fewer than this one's."""
        mine = self._tokens_at(now)
        saved = TokenBucketWindow.__new__(TokenBucketWindow)
        saved.capacity, saved.rate = self.capacity, self.rate
        saved._tokens, saved._t = float(self.capacity), _NEG_INF
        if "tokens" in state:
            if state.get("at") is not None:
                saved._tokens = min(float(self.capacity), float(state["tokens"]))
                saved._t = min(now, float(state["at"]) + to_local)
        else:  # saved by the sliding policy: every send still in the window is a spent token
            tick = 0
            for delta, n in zip(state["ms"], state["n"], strict=True):
                tick += int(delta)
                saved.record(min(now, tick / _MS + to_local), int(n))
        theirs = saved._tokens_at(now)
        if theirs < mine:
            self._tokens = theirs
            self._t = max(now, self._t)
