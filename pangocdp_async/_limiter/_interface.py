"""What a client asks of its limiter: the local :class:`QuotaScheduler` (one process) and the
:class:`SharedQuotaScheduler` (many processes, through SQLite or Redis) both provide it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._config import RateLimit
from ._scheduler import Policy, Reservation

__all__ = ["Limiter"]


@runtime_checkable
class Limiter(Protocol):
    """Paces sends: ``reserve`` before a request starts, ``complete`` when its answer is in,
    and the server's feedback (429s, ``X-Rate-Limit-Remaining``) in between."""

    limits: tuple[RateLimit, ...]
    policy: Policy
    reservations: int
    rate_limited: int
    tightened: int
    backend_errors: int
    backend_down_since: float | None

    @property
    def backend_name(self) -> str:
        """Where the quota is kept: ``"local"``, ``"sqlite"`` or ``"redis"``."""
        ...

    @property
    def in_flight(self) -> int:
        """This process's sends started and not yet completed."""
        ...

    @property
    def waiting(self) -> int:
        """Senders of this process waiting for a slot."""
        ...

    def bind_credential(self, api_key: str) -> None:
        """Called by the client with its API key: a shared quota is named after a hash of it."""
        ...

    async def reserve(self, *, max_wait: float | None = None) -> Reservation:
        """Wait for a slot in every window; the send starts when this returns. Past
        ``max_wait`` seconds, :class:`QuotaWaitError`."""
        ...

    def complete(
        self, reservation: Reservation, *, counted: bool = True, rejected: bool = False
    ) -> None:
        """The answer to ``reservation``'s request is in (``counted=False``: it never left;
        ``rejected``: a 429)."""
        ...

    def on_rate_limited(
        self, retry_after: float | None, reservation: Reservation | None = None
    ) -> float:
        """A 429 (with the server's ``X-Rate-Limit-Retry-After-Seconds``): pause, and return
        the pause in seconds."""
        ...

    def on_remaining(self, remaining: int, reservation: Reservation | None = None) -> int:
        """``X-Rate-Limit-Remaining`` of a success: returns the sends charged as unseen."""
        ...

    def window_usage(self) -> list[tuple[RateLimit, int]]:
        """Sends counted in each window now (in flight included)."""
        ...

    def next_free(self) -> float:
        """Seconds until a new send could start."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds (a store, a backend's connections)."""
        ...
