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
    def backend_name(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def bind_credential(self, api_key: str) -> None: ...

    async def reserve(self, *, max_wait: float | None = None) -> Reservation: ...

    def complete(
        self, reservation: Reservation, *, counted: bool = True, rejected: bool = False
    ) -> None: ...

    def on_rate_limited(
        self, retry_after: float | None, reservation: Reservation | None = None
    ) -> float: ...

    def on_remaining(self, remaining: int, reservation: Reservation | None = None) -> int: ...

    def window_usage(self) -> list[tuple[RateLimit, int]]: ...

    def next_free(self) -> float: ...

    async def close(self) -> None: ...
