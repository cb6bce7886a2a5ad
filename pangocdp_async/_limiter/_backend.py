"""What every shared quota backend (SQLite, Redis) implements, and the configuration they share.

A backend keeps one quota's state where several processes can reach it and applies each
operation atomically: one SQLite write transaction, or one Lua script run in Redis. The
operations are the local :class:`QuotaScheduler`'s, with its semantics:

- ``reserve``: start a send now if every window allows one (sends *in flight* anywhere count as
  now), else say when one may start; a granted send holds a **lease** until it is completed.
  The caller names the lease, so a reservation retried after a lost answer finds the lease its
  first try took instead of taking a second one;
- ``complete``: a send's answer is in: file it at the backend's now (or give its slot back). A
  lease the backend no longer holds (completed already, or expired and counted then) is not
  counted again, so a retried completion counts once;
- ``rate_limited``: a 429: the shared pause, the windows modeled full, the ramp back up;
- ``remaining``: ``X-Rate-Limit-Remaining``: relax a fill the server contradicts, charge a
  deficit;
- ``drain`` and ``charge``: model the windows full, or count sends made elsewhere.

Time is the backend's own clock, so every process agrees on it: for SQLite the host's clock
since boot (steps of the wall clock do not move it), for Redis the server's ``TIME``. A lease
not completed within ``lease_ttl`` (its process died or hung) is counted as a send completed at
the lease's end.

State is bounded: windows above :data:`EXACT_MAX_CAPACITY` count sends in
:data:`BUCKETS_PER_WINDOW` buckets, and sends are forgotten once they left their window by more
than :data:`LOOKBACK_MAX_S`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Protocol

from .._config import Margin, RateLimit
from .._constants import RATE_LIMIT_EPISODE_S
from ._windows import BUCKETS_PER_WINDOW, EXACT_MAX_CAPACITY, LOOKBACK_MAX_S

__all__ = ["QuotaBackend", "QuotaBackendError", "QuotaConfig", "QuotaConfigError",
           "WindowConfig", "namespace_for", "new_lease_id"]

#: Exact windows keep send times to the microsecond (the resolution of Redis ``TIME``).
EXACT_RESOLUTION_S = 1e-6
#: After a 429 the sends allowed in flight double with each acceptance up to this (as locally).
RAMP_UP_TO = 64
_INF = math.inf


class QuotaBackendError(Exception):
    """The shared quota backend could not be reached or did not answer in time (a Redis
    connection refused or timed out, a SQLite file locked past ``lock_timeout``). The shared
    scheduler retries with backoff and sends nothing meanwhile; it never reaches the caller."""


class QuotaConfigError(ValueError):
    """A shared quota cannot be used as set up: the processes sharing it disagree on its
    windows, margin or policy, or its SQLite file is not a database. Raised to the sender;
    retrying does not help."""


@dataclass(frozen=True, slots=True)
class WindowConfig:
    capacity: int
    period: float
    span: float  # period widened by the margin
    resolution: float  # a send's time is rounded up to a multiple of this

    @property
    def step(self) -> float:
        return self.span / self.capacity

    @property
    def rate(self) -> float:
        return self.capacity / self.span


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """What every process sharing a quota must agree on, and the constants of the semantics."""

    policy: str
    windows: tuple[WindowConfig, ...]
    count_rejected: bool = False
    lookback: float = LOOKBACK_MAX_S
    ramp_up_to: int = RAMP_UP_TO
    episode: float = RATE_LIMIT_EPISODE_S

    @classmethod
    def build(cls, limits: tuple[RateLimit, ...], policy: str, margin: Margin,
              count_rejected: bool = False) -> QuotaConfig:
        windows = tuple(
            WindowConfig(
                lim.max_requests, lim.period, margin.widen(lim.period),
                EXACT_RESOLUTION_S if lim.max_requests <= EXACT_MAX_CAPACITY
                else lim.period / BUCKETS_PER_WINDOW,
            )
            for lim in limits
        )
        return cls(policy, windows, count_rejected)

    def signature(self) -> str:
        """A short text every process compares: two configurations that pace differently
        never share one record."""
        parts = [self.policy, "r" if self.count_rejected else "-",
                 f"{self.lookback!r}/{self.ramp_up_to}/{self.episode!r}"]
        parts += [f"{w.capacity}/{w.period!r}/{w.span!r}" for w in self.windows]
        return ";".join(parts)

    def describe(self) -> str:
        windows = ", ".join(f"{w.capacity}/{w.period:g}s (+{w.span - w.period:.3g}s)"
                            for w in self.windows)
        return f"policy {self.policy}, windows [{windows}]"

    @property
    def keep_for(self) -> float:
        """How long state stays useful after the last write (then it may expire)."""
        longest = max((w.span for w in self.windows), default=0.0)
        return longest + self.lookback + 60.0


def new_lease_id() -> int:
    """A lease's name: random, and exact as a Lua number (below 2**53)."""
    return secrets.randbits(52) + 1


def namespace_for(api_key: str) -> str:
    """The name a quota is kept under for ``api_key``: a hash, never the key itself."""
    return hashlib.sha256(b"pangocdp-quota\0" + api_key.encode()).hexdigest()[:24]


class QuotaBackend(Protocol):
    """One quota's shared state. Every method is one atomic operation on the backend and may
    raise :class:`QuotaBackendError` (nothing was applied, or it is safe to apply it again)."""

    name: str

    def bind(self, namespace: str, config: QuotaConfig) -> None:
        """Choose the quota (before the first operation)."""

    async def reserve(self, lease_ttl: float, lease: int | None = None
                      ) -> tuple[float, int | None, float]:
        """``(now, lease, due)``: a lease if a send may start now (``due`` is then now), else
        ``None`` and when one may (``inf``: only after a completion). ``lease`` names the lease
        (a new random one if ``None``); if the backend holds it already, it is granted again."""

    async def complete(self, lease: int, stamp: float, counted: bool, rejected: bool) -> None:
        """The send under ``lease`` (started at ``stamp``) ended. Nothing happens if the
        backend no longer holds ``lease``."""

    async def rate_limited(self, stamp: float | None, pause: float) -> tuple[float, float]:
        """A 429 for a send started at ``stamp``: ``(now, paused_until)``."""

    async def remaining(self, remaining: int, stamp: float | None) -> int:
        """The server's ``X-Rate-Limit-Remaining``: returns the sends charged."""

    async def drain(self) -> None:
        """Model every window as full now."""

    async def charge(self, counts: list[int]) -> None:
        """Count ``counts[i]`` sends made elsewhere in window ``i`` (at most a full window)."""

    async def usage(self) -> tuple[float, list[int], int, float]:
        """``(now, sends counted per window (in flight included), in flight, next due)``."""

    async def close(self) -> None:
        """Release connections (the state stays)."""
