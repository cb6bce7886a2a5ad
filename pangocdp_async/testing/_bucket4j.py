"""A model of the server's limiter: a Bucket4j bucket with several bandwidths.

Read from Bucket4j's behaviour as the contract describes it: every bandwidth must hold a token
for a request to pass, which then takes one from each; a rejected request takes nothing; refill
is greedy (continuous) or interval (all tokens at once every period, at some phase); the bucket
starts full. Arithmetic is in integer nanoseconds, so long simulations do not drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .._config import RateLimit

__all__ = ["Bucket4jBucket", "ConsumeResult", "Refill"]

#: How a :class:`Bucket4jBucket` refills: ``"greedy"`` (continuously) or ``"interval"``
#: (all at once at the end of each period).
Refill = Literal["greedy", "interval"]
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    """``remaining``: smallest token count after a success; ``wait_s``: time until every
    bandwidth would have a token, after a rejection (the server truncates it for the header)."""

    accepted: bool
    remaining: int
    wait_s: float

    @property
    def retry_after_header(self) -> str:
        """``X-Rate-Limit-Retry-After-Seconds`` as the server sends it (whole seconds)."""
        return str(int(self.wait_s))  # Bucket4j truncates to whole seconds


class _Bandwidth:
    __slots__ = ("capacity", "last_ns", "period_ns", "phase_ns", "units")

    def __init__(self, limit: RateLimit, start_ns: int, phase_ns: int) -> None:
        self.capacity = limit.max_requests
        self.period_ns = round(limit.period * _NS)
        # greedy: tokens are kept in units of 1/period_ns, so refill is exact integer math.
        # interval: units counts whole tokens.
        self.units = self.capacity * self.period_ns
        self.last_ns = start_ns
        self.phase_ns = phase_ns % self.period_ns


class Bucket4jBucket:
    """One bucket of ``limits``. ``phase`` (seconds) places interval refills at
    ``phase + k * period``; it is ignored for greedy refill."""

    def __init__(
        self,
        limits: Sequence[RateLimit],
        refill: Refill = "greedy",
        *,
        start: float = 0.0,
        phase: float = 0.0,
    ) -> None:
        if refill not in ("greedy", "interval"):
            raise ValueError(f"refill must be 'greedy' or 'interval', got {refill!r}")
        self.refill: Refill = refill
        start_ns = round(start * _NS)
        phase_ns = round(phase * _NS)
        self._bands = [_Bandwidth(lim, start_ns, phase_ns) for lim in limits]
        if refill == "interval":
            for band in self._bands:
                band.units = band.capacity
        self.accepted = 0
        self.rejected = 0

    def _refill(self, band: _Bandwidth, now_ns: int) -> None:
        if now_ns <= band.last_ns:
            return
        if self.refill == "greedy":
            band.units = min(
                band.capacity * band.period_ns,
                band.units + (now_ns - band.last_ns) * band.capacity,
            )
        else:
            p, ph = band.period_ns, band.phase_ns
            if (now_ns - ph) // p > (band.last_ns - ph) // p:  # crossed a refill boundary
                band.units = band.capacity
        band.last_ns = now_ns

    def _tokens(self, band: _Bandwidth) -> int:
        return band.units // band.period_ns if self.refill == "greedy" else band.units

    def _wait_ns(self, band: _Bandwidth, now_ns: int) -> int:
        if self._tokens(band) >= 1:
            return 0
        if self.refill == "greedy":
            missing = band.period_ns - band.units
            return -(-missing // band.capacity)
        p, ph = band.period_ns, band.phase_ns
        return ((now_ns - ph) // p + 1) * p + ph - now_ns

    def try_consume(self, now: float) -> ConsumeResult:
        """One request arriving at ``now`` (seconds)."""
        now_ns = round(now * _NS)
        for band in self._bands:
            self._refill(band, now_ns)
        if all(self._tokens(band) >= 1 for band in self._bands):
            for band in self._bands:
                band.units -= band.period_ns if self.refill == "greedy" else 1
            self.accepted += 1
            remaining = min((self._tokens(b) for b in self._bands), default=0)
            return ConsumeResult(True, remaining, 0.0)
        self.rejected += 1
        wait = max(self._wait_ns(band, now_ns) for band in self._bands)
        return ConsumeResult(False, min(self._tokens(b) for b in self._bands), wait / _NS)

    def tokens(self, now: float) -> list[int]:
        """Token count of each bandwidth at ``now`` (for tests)."""
        now_ns = round(now * _NS)
        for band in self._bands:
            self._refill(band, now_ns)
        return [self._tokens(band) for band in self._bands]
