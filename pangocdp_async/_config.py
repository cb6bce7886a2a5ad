"""Small frozen value objects that configure the client."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ._constants import DEFAULT_MARGIN_ABSOLUTE_S, DEFAULT_MARGIN_RELATIVE, DOCUMENTED_WINDOWS

__all__ = ["DOCUMENTED_LIMITS", "Margin", "RateLimit", "validate_rate_limits"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``max_requests`` requests in ``period`` seconds.

    >>> RateLimit(50, 1.0)
    RateLimit(max_requests=50, period=1.0)
    """

    max_requests: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.max_requests, bool) or not isinstance(self.max_requests, int):
            raise TypeError(f"RateLimit.max_requests must be an int, got {self.max_requests!r}")
        if self.max_requests < 1:
            raise ValueError(f"RateLimit.max_requests must be >= 1, got {self.max_requests}")
        if isinstance(self.period, bool) or not isinstance(self.period, (int, float)):
            raise TypeError(f"RateLimit.period must be a number of seconds, got {self.period!r}")
        if not math.isfinite(self.period) or self.period <= 0:
            raise ValueError(f"RateLimit.period must be a positive number, got {self.period}")
        object.__setattr__(self, "period", float(self.period))


#: The five windows of PangoCDP's documentation: 50/s, 1000/min, 5000/5 min, 50000/h, 400000/day.
DOCUMENTED_LIMITS: tuple[RateLimit, ...] = tuple(RateLimit(c, t) for c, t in DOCUMENTED_WINDOWS)


def validate_rate_limits(limits: object) -> tuple[RateLimit, ...]:
    """Return ``limits`` as a tuple sorted by period, or raise a clear error.

    An empty sequence means "no client-side pacing" (for tests and benchmarks).
    """
    if isinstance(limits, RateLimit):
        return (limits,)
    if not isinstance(limits, Iterable):
        raise TypeError(
            f"rate_limits must be a sequence of RateLimit, got {type(limits).__name__}"
        )
    items = tuple(limits)
    for i, item in enumerate(items):
        if not isinstance(item, RateLimit):
            raise TypeError(f"rate_limits[{i}] must be a RateLimit, got {type(item).__name__}")
    periods = [lim.period for lim in items]
    if len(set(periods)) != len(periods):
        raise ValueError("rate_limits has two windows with the same period")
    return tuple(sorted(items, key=lambda lim: lim.period))


@dataclass(frozen=True, slots=True)
class Margin:
    """How much wider than documented the scheduler treats every window.

    A window of ``period`` seconds is counted as ``period + absolute + relative * period``.
    Network delay needs no margin: a send counts from its start until its answer is back. The
    absolute part is a floor for what the client cannot see (the server's queueing before its
    limiter reads the clock; a request still in the kernel when a timeout gives up on it); the
    relative part absorbs a client clock that runs faster than the server's. The default costs
    about 9% of the one-second burst (50 per 1.1 s) and 0.01% of the daily window.
    """

    absolute: float = DEFAULT_MARGIN_ABSOLUTE_S
    relative: float = DEFAULT_MARGIN_RELATIVE

    def __post_init__(self) -> None:
        for name in ("absolute", "relative"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Margin.{name} must be a finite number >= 0, got {value!r}")

    def widen(self, period: float) -> float:
        """The length the scheduler counts a window of ``period`` seconds as."""
        return period + self.absolute + self.relative * period
