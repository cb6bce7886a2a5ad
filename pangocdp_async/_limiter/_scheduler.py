"""QuotaScheduler: one FIFO of send slots across every window, one timer, no polling.

A caller *reserves* a slot: in one synchronous step (no ``await`` between checking and taking)
the scheduler finds the earliest time at which every window has room, records the send there in
all windows, and the caller sleeps until then. Slots never decrease, so FIFO order falls out of
the arithmetic; one timer wakes the head of the queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from .._config import DOCUMENTED_LIMITS, Margin, RateLimit, validate_rate_limits
from ._store import QuotaStore
from ._windows import SlidingWindow, TokenBucketWindow, Window

__all__ = ["Policy", "QuotaScheduler", "Reservation"]

logger = logging.getLogger("pangocdp_async")

Policy = Literal["sliding", "token-bucket"]

#: After a 429 the pause is at least the server's hint plus this (the hint is truncated).
RETRY_AFTER_PAD_S = 1.0
#: The pause is stretched by a random fraction up to this, so clients do not resynchronise.
PAUSE_JITTER = 0.1
#: Save the state to the store after this many reservations (and on close).
DEFAULT_SAVE_EVERY = 50
STATE_VERSION = 1


class Reservation(NamedTuple):
    """A send slot: ``slot`` on the scheduler's clock; ``seq`` numbers reservations.

    (A NamedTuple: one is made per request, and tuples are the cheapest immutable record.)
    """

    slot: float
    seq: int


@dataclass(slots=True)
class _Waiter:
    reservation: Reservation
    future: asyncio.Future[Reservation]


class QuotaScheduler:
    """Paces requests so that no window of ``limits`` is ever exceeded, for every sender sharing
    it (pass one instance to several clients to share one quota).

    ``policy="sliding"`` (default) allows at most C sends in any ``period + margin``: safe against
    Bucket4j greedy and interval refill at any phase. ``policy="token-bucket"`` mirrors greedy
    refill (more throughput right after idling) and is unsafe against interval refill.

    ``clock`` and ``sleep`` default to the running loop's clock and :func:`asyncio.sleep`;
    ``wall_clock`` (epoch seconds) is used only to save and restore state. With a ``store``, the
    state is loaded on first use and saved every ``save_every`` reservations and on
    :meth:`close`.

    >>> scheduler = QuotaScheduler(policy="sliding")          # doctest: +SKIP
    >>> reservation = await scheduler.reserve()               # doctest: +SKIP
    """

    def __init__(
        self,
        limits: Sequence[RateLimit] = DOCUMENTED_LIMITS,
        *,
        policy: Policy = "sliding",
        margin: Margin | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        store: QuotaStore | None = None,
        save_every: int = DEFAULT_SAVE_EVERY,
        rng: random.Random | None = None,
    ) -> None:
        if policy not in ("sliding", "token-bucket"):
            raise ValueError(f"policy must be 'sliding' or 'token-bucket', got {policy!r}")
        if save_every < 1:
            raise ValueError("save_every must be >= 1")
        self.limits = validate_rate_limits(limits)
        self.policy: Policy = policy
        self.margin = margin if margin is not None else Margin()
        cls = SlidingWindow if policy == "sliding" else TokenBucketWindow
        self._windows: list[Window] = [cls(lim, self.margin) for lim in self.limits]
        if (clock is None) != (sleep is None):
            raise ValueError("inject clock and sleep together (or neither)")
        self._clock = clock
        self._injected_sleep = sleep
        self._wall_clock = wall_clock
        self._store = store
        self._save_every = save_every
        self._rng = rng if rng is not None else random.Random()
        self._loaded = store is None
        self._last_slot = float("-inf")
        self._paused_until = float("-inf")
        self._pause_started = float("-inf")
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._seq = 0
        self._unsaved = 0
        #: Counters, for stats and tests.
        self.reservations = 0
        self.rate_limited = 0
        self.tightened = 0

    # --- time ---------------------------------------------------------------------------
    def now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    # --- the reservation ------------------------------------------------------------------
    def claim(self) -> Reservation:
        """Reserve the next slot synchronously; the caller must not send before ``slot``.

        Prefer :meth:`reserve`, which also waits. This is the atomic step: it checks and takes
        every window at once and costs O(number of windows).
        """
        return self._claim(self.now())

    def _claim(self, now: float) -> Reservation:
        if not self._loaded:
            self._load(now)
        slot = max(now, self._last_slot, self._paused_until)
        for w in self._windows:
            e = w.earliest()
            if e > slot:
                slot = e
        for w in self._windows:
            w.record(slot)
        self._last_slot = slot
        self._seq += 1
        self.reservations += 1
        if self._store is not None:
            self._unsaved += 1
            if self._unsaved >= self._save_every:
                self.save()
        return Reservation(slot, self._seq)

    async def reserve(self) -> Reservation:
        """Wait for a send slot in FIFO order and return it.

        The slot is recorded as a send in every window even if the caller is cancelled while
        waiting (nothing is refunded: the count only errs on the safe side).
        """
        now = self.now()
        reservation = self._claim(now)
        if reservation.slot <= now:
            return reservation
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reservation] = loop.create_future()
        self._waiters.append(_Waiter(reservation, future))
        if self._injected_sleep is None:
            if self._handle is None:
                self._arm(loop)
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.ensure_future(self._run_timer())
        return await future

    def has_capacity(self) -> bool:
        """Whether a reservation made now would not have to wait."""
        now = self.now()
        if max(self._last_slot, self._paused_until) > now:
            return False
        return all(w.earliest() <= now for w in self._windows)

    def _release_due(self, now: float) -> float | None:
        """Wake every waiter whose slot has come; return when the next one is due."""
        waiters = self._waiters
        while waiters:
            w = waiters[0]
            if not w.future.done():  # a done future was cancelled while waiting
                due = max(w.reservation.slot, self._paused_until)
                if due > now:
                    return due
                w.future.set_result(w.reservation)
            waiters.popleft()
        return None

    # Two interchangeable timers: on the loop's own clock one TimerHandle (cheapest); with an
    # injected clock and sleep, one task that sleeps until the head is due.
    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._release_due(self.now())
        self._handle = None if due is None else loop.call_at(due, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        self._arm(loop)

    async def _run_timer(self) -> None:
        sleep = self._injected_sleep
        assert sleep is not None
        while (due := self._release_due(self.now())) is not None:
            await sleep(due - self.now())

    # --- feedback from the server -----------------------------------------------------------
    def on_rate_limited(
        self, retry_after: float | None, reservation: Reservation | None = None
    ) -> float:
        """A 429 arrived: the model was wrong. Pause every sender and treat the windows as drained.

        The pause lasts at least ``max(retry_after + 1 s, the model's own wait)``, stretched by up
        to 10% at random. A 429 for a request sent before the current pause began belongs to the
        same episode and is only counted. Returns the pause end on the scheduler's clock.
        """
        now = self.now()
        self.rate_limited += 1
        if reservation is not None and reservation.slot <= self._pause_started:
            return self._paused_until
        logger.warning(
            "PangoCDP answered 429 (retry-after %s): the quota model was wrong or another client "
            "shares the quota; pausing all senders",
            "absent" if retry_after is None else f"{retry_after:g} s",
        )
        for w in self._windows:
            w.drain(now)
        model_wait = max([0.0, *(w.earliest() - now for w in self._windows)])
        base = max((retry_after or 0.0) + RETRY_AFTER_PAD_S, model_wait)
        until = now + base * (1.0 + self._rng.uniform(0.0, PAUSE_JITTER))
        self._pause_started = now
        self._paused_until = max(self._paused_until, until)
        # Queued senders would now send later than their recorded slots: give them new slots
        # after the pause (their old ones stay counted, which only errs on the safe side).
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.reservation = self.claim()
        return self._paused_until

    def on_remaining(self, remaining: int, round_trip: float = 0.0) -> int:
        """``X-Rate-Limit-Remaining`` from a success. It may only tighten the model.

        The server's number is the smallest token count over its windows. Our own sends in the
        window (widened by the request's round trip) bound what the server can have counted; if it
        reports less, somebody else spends the same quota: each window is charged the
        difference. Returns the number of sends charged.
        """
        now = self.now()
        model = min(w.remaining(now, round_trip) for w in self._windows) if self._windows else 0
        deficit = model - remaining
        if deficit <= 0:
            return 0
        self.tightened += deficit
        logger.info(
            "server reports %d requests left where the model expected %d: charging %d unseen sends",
            remaining, model, deficit,
        )
        for w in self._windows:
            w.add_phantoms(now, deficit)
        return deficit

    def drain(self) -> None:
        """Assume every window is exhausted now (for a cold start with a quota used elsewhere)."""
        now = self.now()
        for w in self._windows:
            w.drain(now)

    # --- state -------------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """A JSON-able snapshot, with times in epoch seconds so another process can load it."""
        now = self.now()
        to_wall = self._wall_clock() - now
        return {
            "version": STATE_VERSION,
            "policy": self.policy,
            "saved_at": now + to_wall,
            "unsaved_limit": self._save_every,
            "paused_until": (
                self._paused_until + to_wall if math.isfinite(self._paused_until) else None
            ),
            "windows": [w.export(to_wall) for w in self._windows],
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Load a snapshot from :meth:`export_state` (possibly of another process).

        Windows are matched by capacity and period; unknown ones are ignored. Reservations made
        after the snapshot and before a crash were not saved: up to ``unsaved_limit`` of them are
        charged now, which errs on the safe side.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported quota state version {state.get('version')!r}")
        now = self.now()
        to_local = now - self._wall_clock()
        saved = {(int(s["max_requests"]), float(s["period"])): s for s in state["windows"]}
        unsaved = int(state.get("unsaved_limit", 0))
        for w in self._windows:
            window_state = saved.get((w.capacity, w.limit.period))
            if window_state is not None:
                w.restore(window_state, to_local)
            w.add_phantoms(now, unsaved)
        paused = state.get("paused_until")
        if paused is not None:
            self._paused_until = max(self._paused_until, float(paused) + to_local)
        self._loaded = True

    def _load(self, now: float) -> None:
        self._loaded = True
        assert self._store is not None
        state = self._store.load()
        if state is None:
            logger.info("no saved quota state: assuming the server's windows are full")
            return
        self.import_state(state)
        logger.info("restored quota state saved %.0f s ago", self._wall_clock() - state["saved_at"])

    def save(self, *, clean: bool = False) -> None:
        """Write the state to the store now. ``clean=True`` (on close) marks that no reservation
        after it is missing."""
        if self._store is None:
            return
        state = self.export_state()
        if clean:
            state["unsaved_limit"] = 0
        self._store.save(state)
        self._unsaved = 0

    async def close(self) -> None:
        """Stop the timer, fail queued waiters with CancelledError, save the state."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._waiters:
            self._waiters.popleft().future.cancel()
        if self._store is not None and self._loaded:
            self.save(clean=True)

    # --- introspection -----------------------------------------------------------------------
    def window_usage(self) -> list[tuple[RateLimit, int]]:
        """Sends counted in each window now."""
        now = self.now()
        return [(w.limit, w.used(now)) for w in self._windows]

    def next_free(self) -> float:
        """Seconds from now until a new reservation's slot (0 if it could go now)."""
        now = self.now()
        slot = max(now, self._last_slot, self._paused_until, *(w.earliest() for w in self._windows))
        return slot - now

    def __repr__(self) -> str:
        try:
            now = self.now()
        except RuntimeError:  # no running loop and no clock: show the configuration only
            windows = ", ".join(f"{w.capacity}/{w.limit.period:g}s" for w in self._windows)
            return f"QuotaScheduler(policy={self.policy!r}, windows=[{windows}])"
        usage = ", ".join(
            f"{w.capacity}/{w.limit.period:g}s: {w.used(now)} used" for w in self._windows
        )
        paused = max(0.0, self._paused_until - now)
        return (
            f"QuotaScheduler(policy={self.policy!r}, windows=[{usage}], "
            f"next_free=+{self.next_free():.3f}s, waiters={len(self._waiters)}, "
            f"paused={paused:.3f}s, rate_limited={self.rate_limited})"
        )
