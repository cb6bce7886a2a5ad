"""QuotaScheduler: one FIFO of senders across every window, one timer, no polling.

The rule that makes it safe whatever the event loop, the network or the server's refill does:

- a send is **stamped when it starts** (``reserve`` returns in the same step in which the caller
  hands the request to the transport), never at a planned time: a waiter woken late, after a
  blocking call or a GC pause, checks every window again at its real time, so a stall can never
  release a burst;
- until its answer is back (``complete``), a send counts in every window as *in flight*: it may
  reach the server at any moment. Once complete it is filed at its completion time, the latest
  moment it can have arrived. So a send occupies each window from its start until its answer
  plus the window's span: the margin for network delay is each request's own round trip, tail
  included, and the configured :class:`Margin` is only a floor.

Waiters form one FIFO. Only the head claims; when it has claimed it wakes the next one at once
if the windows allow, else one timer is armed for the moment they will.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NoReturn

from .._config import DOCUMENTED_LIMITS, Margin, RateLimit, validate_rate_limits
from .._constants import (
    DEFAULT_CLOCK_STEP_ALLOWANCE_S,
    DEFAULT_MAX_RETRY_AFTER_S,
    DEFAULT_SAVE_EVERY,
    PAUSE_JITTER,
    RATE_LIMIT_EPISODE_S,
    RETRY_AFTER_PAD_S,
)
from .._exceptions import QuotaWaitError
from .._validate import check_bool, check_int, check_seconds
from ._store import QuotaStore
from ._windows import SlidingWindow, TokenBucketWindow, Window

__all__ = ["Policy", "QuotaScheduler", "Reservation"]

logger = logging.getLogger("pangocdp_async")

#: How the scheduler reads the windows: ``"sliding"`` (a send counts for a full window after
#: it) or ``"token-bucket"`` (each window refills continuously, as a Bucket4j server does).
Policy = Literal["sliding", "token-bucket"]

STATE_VERSION = 2
#: After a 429 the sends allowed in flight double with each acceptance up to this, then the
#: limit is lifted.
RAMP_UP_TO = 64
_NEG_INF = float("-inf")
_INF = float("inf")


class Reservation(NamedTuple):
    """A send that started: ``stamp`` is its start on the scheduler's clock, ``seq`` numbers
    reservations. Hand it back to :meth:`QuotaScheduler.complete` when the answer is in.

    (A NamedTuple: one is made per request, and tuples are the cheapest immutable record.)
    """

    stamp: float
    seq: int


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    deadline: float  # on the scheduler's clock; inf for none
    budget: float
    waiting: bool = True  # False once it left the queue (for the deadline heap's lazy deletes)


class QuotaScheduler:
    """Paces requests so that no window of ``limits`` is ever exceeded, for every sender sharing
    it (pass one instance to several clients of one process to share one quota).

    ``policy="sliding"`` (default) allows at most C sends in any ``period + margin``: safe against
    Bucket4j greedy and interval refill at any phase. ``policy="token-bucket"`` mirrors greedy
    refill (more throughput right after idling) and is unsafe against interval refill.

    Use :meth:`slot` around each request (or :meth:`reserve` and :meth:`complete`)::

        async with scheduler.slot() as reservation:
            response = await post(...)          # starts in the step in which the slot is given

    ``clock`` and ``sleep`` default to the running loop's clock and :func:`asyncio.sleep`;
    ``wall_clock`` (epoch seconds) is used only to save and restore state. With a ``store``, the
    state is loaded on first use and saved every ``save_every`` sends and on :meth:`close`.

    A 429 (:meth:`on_rate_limited`) pauses every sender for the server's hint (at most
    ``max_retry_after``) plus ``retry_after_pad`` (1 s: Bucket4j truncates the hint), then
    lets one request through alone, 2 once it is accepted, then 4, ..., and models windows as
    full, shortest first: one more window with each further 429 of the same episode.

    >>> scheduler = QuotaScheduler(policy="sliding")          # doctest: +SKIP
    >>> async with scheduler.slot():                          # doctest: +SKIP
    ...     await send()
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
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S,
        retry_after_pad: float = RETRY_AFTER_PAD_S,
        clock_step_allowance: float = DEFAULT_CLOCK_STEP_ALLOWANCE_S,
        count_rejected: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if policy not in ("sliding", "token-bucket"):
            raise ValueError(f"policy must be 'sliding' or 'token-bucket', got {policy!r}")
        check_int("save_every", save_every, low=1)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be callable, got {sleep!r}")
        if not callable(wall_clock):
            raise TypeError(f"wall_clock must be callable, got {wall_clock!r}")
        if store is not None and not (hasattr(store, "load") and hasattr(store, "save")):
            raise TypeError(f"store must have load() and save(), got {type(store).__name__}")
        check_seconds("max_retry_after", max_retry_after, allow_zero=False)
        check_seconds("clock_step_allowance", clock_step_allowance)
        check_seconds("retry_after_pad", retry_after_pad)
        check_bool("count_rejected", count_rejected)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        if margin is not None and not isinstance(margin, Margin):
            raise TypeError(f"margin must be a Margin, got {type(margin).__name__}")
        if (clock is None) != (sleep is None):
            raise ValueError("inject clock and sleep together (or neither)")
        self.limits = validate_rate_limits(limits)
        self.policy: Policy = policy
        self.margin = margin if margin is not None else Margin()
        cls = SlidingWindow if policy == "sliding" else TokenBucketWindow
        self._windows: list[Window] = [cls(lim, self.margin) for lim in self.limits]
        self.max_retry_after = float(max_retry_after)
        self.clock_step_allowance = float(clock_step_allowance)
        self.retry_after_pad = float(retry_after_pad)
        self.count_rejected = count_rejected
        self._clock = clock
        self._injected_sleep = sleep
        self._wall_clock = wall_clock
        self._store = store
        self._save_every = save_every
        self._rng = rng if rng is not None else random.Random()
        self._loaded = store is None
        self._in_flight: set[int] = set()
        self._paused_until = _NEG_INF
        self._pause_started = _NEG_INF
        self._level = 0  # windows (shortest first) modeled full in the current 429 episode
        # After a 429, how many sends may be in flight at once: 1, doubled by each accepted
        # send that started after the pause, until it no longer limits anything.
        self._ramp: float = _INF
        self._waiters: deque[_Waiter] = deque()
        self._deadlines: list[tuple[float, int, _Waiter]] = []  # heap, for max_wait
        self._seq_deadline = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._timer: asyncio.Task[None] | None = None
        self._timer_due = _NEG_INF
        self._seq = 0
        self._unsaved = 0
        self._saving: asyncio.Task[None] | None = None
        #: Counters, for stats and tests.
        self.reservations = 0
        self.rate_limited = 0
        self.tightened = 0
        #: (The shared scheduler's; a local one has no backend to lose.)
        self.backend_errors = 0
        self.backend_down_since: float | None = None

    @property
    def backend_name(self) -> str:
        """``"local"``: the quota lives in this process."""
        return "local"

    def bind_credential(self, api_key: str) -> None:
        """Nothing to do: a local scheduler's quota is its own."""

    # --- time ---------------------------------------------------------------------------
    def now(self) -> float:
        """The scheduler's clock (the running loop's, unless one was injected)."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            old = self._loop
            if old is not None and old.is_closed():
                # Its loop is gone: its waiters can never run again, and its sends in flight
                # ended with it (counted now, at the latest moment they can have arrived).
                self._waiters.clear()
                self._deadlines.clear()
                now = self.now()
                for _ in self._in_flight:
                    for w in self._windows:
                        w.record(now)
                self._in_flight.clear()
            if old is not None and (self._waiters or self._in_flight):
                raise RuntimeError(
                    "this QuotaScheduler has senders waiting or in flight on another event "
                    "loop; a scheduler serves one loop at a time"
                )
            # A new loop (a second asyncio.run): timers of the old one are gone with it.
            self._loop = loop
            self._handle = None
            self._timer = None
            self._saving = None
        return loop

    # --- the reservation ------------------------------------------------------------------
    def _due(self, now: float) -> float:
        """When the head of the queue may start (``-inf``: now; ``inf``: after a completion)."""
        due = self._paused_until
        in_flight = len(self._in_flight)
        if in_flight >= self._ramp:
            return _INF  # after a 429: one request tests the water, then 2, 4, ... at a time
        for w in self._windows:
            e = w.earliest(in_flight)
            if e > due:
                due = e
        return due

    def _take(self, now: float) -> Reservation:
        self._seq += 1
        seq = self._seq
        self._in_flight.add(seq)
        self.reservations += 1
        if self._store is not None:
            self._unsaved += 1
            if self._unsaved >= self._save_every:
                self._save_soon()
        return Reservation(now, seq)

    def try_reserve(self) -> Reservation | None:
        """Start a send now if the windows allow it and nobody is queued, else ``None``.

        The send must begin in the same step (no ``await`` between this call and handing the
        request to the transport), and be passed to :meth:`complete` when its answer is in.
        """
        now = self.now()
        if not self._loaded:
            self._load()
        if not self._waiters and self._due(now) <= now:
            return self._take(now)
        return None

    async def reserve(self, *, max_wait: float | None = None) -> Reservation:
        """Wait for a send slot in FIFO order; the send starts when this returns.

        The caller must hand its request to the transport without awaiting anything else first,
        and pass the reservation to :meth:`complete` when the answer (or an error) is in.

        ``max_wait`` (seconds): raise :class:`QuotaWaitError` instead of waiting past it, at once
        if the scheduler already knows the slot is that far away or further (a 429 pause, spent
        windows), or as soon as a 429 pushes it there while waiting. Cancelling a waiter
        returns at once; a cancelled waiter takes nothing.
        """
        loop = self._bind_loop()
        now = self.now()
        if not self._loaded:
            self._load()
        waiters = self._waiters
        if not waiters and self._due(now) <= now:
            return self._take(now)
        deadline = _INF
        budget = _INF
        if max_wait is not None:
            budget = float(max_wait)
            deadline = now + budget
            self._refuse_past(deadline, budget, now)
        waiter = _Waiter(loop.create_future(), deadline, budget)
        waiters.append(waiter)
        if deadline < _INF:
            self._seq_deadline += 1
            heapq.heappush(self._deadlines, (deadline, self._seq_deadline, waiter))
            self._wake_head(now)  # the timer may now be due earlier
        elif len(waiters) == 1:
            self._wake_head(now)
        try:
            while True:
                await waiter.future
                now = self.now()
                if self._due(now) <= now:
                    waiters.popleft()  # we are the head: the only one ever woken
                    reservation = self._take(now)
                    self._wake_head(now)
                    return reservation
                # Woken, but the windows changed meanwhile (a 429, a stall's catch-up): wait
                # again, still at the head, unless that now takes longer than allowed.
                self._refuse_past(deadline, budget, now)
                waiter.future = loop.create_future()
                self._wake_head(now)
        except BaseException:
            was_head = bool(waiters) and waiters[0] is waiter
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if was_head:
                self._wake_head(self.now())
            raise
        finally:
            waiter.waiting = False

    def _refuse_past(self, deadline: float, budget: float, now: float) -> None:
        """Raise QuotaWaitError if the scheduler already knows the next start lies at
        ``deadline`` or beyond (``inf``, "after a completion", is no known wait)."""
        expected = self._due(now)
        if deadline <= expected < _INF:
            raise QuotaWaitError(retry_after=expected - now, budget=budget)

    def _expire_deadlines(self, now: float) -> float:
        """Fail the waiters whose ``max_wait`` ran out before their turn; return the next
        deadline (``inf`` if none)."""
        heap = self._deadlines
        while heap:
            deadline, _, waiter = heap[0]
            if not waiter.waiting or waiter.future.done():
                heapq.heappop(heap)  # left the queue, or woken: it re-checks by itself
                continue
            if deadline > now:
                return deadline
            heapq.heappop(heap)
            due = self._due(now)
            retry_after = due - now if now < due < _INF else waiter.budget
            waiter.future.set_exception(
                QuotaWaitError(retry_after=retry_after, budget=waiter.budget))
        return _INF

    def complete(
        self, reservation: Reservation, *, counted: bool = True, rejected: bool = False
    ) -> None:
        """The answer to ``reservation``'s request is in (or it failed): file the send at now.

        Two outcomes give the slot back, because the server certainly did not count them:
        ``counted=False``, a request that never left (the connection could not be opened), and
        ``rejected=True``, a 429 (Bucket4j takes no token from a rejected request; pass
        ``count_rejected=True`` to the constructor for a server that does). Anything else is
        counted, cancelled and timed-out requests included: a refund that might be wrong could
        make the model less safe. Completing a reservation twice does nothing.
        """
        try:
            self._in_flight.remove(reservation.seq)
        except KeyError:
            return
        now = self.now()
        if counted and (self.count_rejected or not rejected):
            for w in self._windows:
                w.expire(now)  # amortized O(1): keeps memory bounded on the recording path
                w.record(now)
        if self._ramp < _INF and counted and not rejected and (
            reservation.stamp > self._pause_started
        ):
            self._ramp = _INF if self._ramp >= RAMP_UP_TO else self._ramp * 2
        if self._waiters and self._loop is not None:
            self._wake_head(now)

    @asynccontextmanager
    async def slot(self, *, max_wait: float | None = None) -> AsyncIterator[Reservation]:
        """``async with scheduler.slot(): await send()``: :meth:`reserve`, then
        :meth:`complete` when the block exits, however it exits."""
        reservation = await self.reserve(max_wait=max_wait)
        try:
            yield reservation
        finally:
            self.complete(reservation)

    def has_capacity(self) -> bool:
        """Whether a reservation made now would not have to wait."""
        now = self.now()
        return not self._waiters and self._due(now) <= now

    # The timer: on the loop's own clock one TimerHandle (cheapest); with an injected clock and
    # sleep, one task that sleeps until the head is due. Either way at most one is armed.
    def _wake_head(self, now: float) -> None:
        """Wake the head if it may start now, fail waiters past their deadline, and keep the
        one timer armed for whichever comes next."""
        waiters = self._waiters
        if not waiters:
            self._disarm()
            return
        next_deadline = self._expire_deadlines(now) if self._deadlines else _INF
        head = waiters[0]
        if head.future.done():
            due = _INF  # already woken (or failed); it will claim or leave when it runs
        else:
            due = self._due(now)
            if due <= now:
                head.future.set_result(None)
                due = _INF
        when = min(due, next_deadline)
        if when == _INF:
            self._disarm()  # a completion (or the woken head) will call again
            return
        if when == self._timer_due and (self._handle is not None or self._timer is not None):
            return
        self._disarm()
        self._timer_due = when
        loop = self._loop
        assert loop is not None
        if self._injected_sleep is None:
            self._handle = loop.call_at(when, self._on_timer)
        else:
            self._timer = loop.create_task(self._sleep_until(when))

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._timer is not None:
            if self._timer is not asyncio.current_task():
                self._timer.cancel()
            self._timer = None
        self._timer_due = _NEG_INF

    def _on_timer(self) -> None:
        self._handle = None
        self._timer_due = _NEG_INF
        self._wake_head(self.now())

    async def _sleep_until(self, due: float) -> None:
        sleep = self._injected_sleep
        assert sleep is not None
        await sleep(max(0.0, due - self.now()))
        self._timer = None
        self._timer_due = _NEG_INF
        self._wake_head(self.now())

    # --- feedback from the server -----------------------------------------------------------
    def on_rate_limited(
        self, retry_after: float | None, reservation: Reservation | None = None
    ) -> float:
        """A 429 arrived: the model was wrong (another client spends the same quota, or the
        server counts differently). Returns the end of the pause on the scheduler's clock.

        - Every sender, queued ones included, pauses for ``retry_after`` (capped at
          ``max_retry_after``; absent means 0) plus one second, stretched by up to 10%.
        - After the pause one request goes alone; each acceptance doubles how many may be in
          flight (1, 2, 4, ... up to 64, then no limit), so a server still refusing costs a
          few rejections, not one per sender.
        - Windows are modeled as exactly full at the 429, refilling at their own pace: the
          shortest window for the first 429 of an episode, one more window for each further one
          (429s less than five minutes apart). A full model never adds to the sends on record,
          so repeated 429s cannot stack up pauses.
        - A 429 for a request started before the current pause began belongs to the same
          episode and is only counted.
        - Queued requests whose ``max_wait`` ends before the pause does, or as it does, fail at
          once with :class:`QuotaWaitError`.
        """
        now = self.now()
        self.rate_limited += 1
        if reservation is not None and reservation.stamp <= self._pause_started:
            return self._paused_until
        hint = 0.0 if retry_after is None else float(retry_after)
        if math.isnan(hint) or hint < 0:
            hint = 0.0  # unreadable: as if absent
        if hint > self.max_retry_after:
            logger.warning(
                "429 says retry after %.3g s; capping the pause at max_retry_after=%.0f s",
                hint, self.max_retry_after,
            )
            hint = self.max_retry_after
        episode_continues = now - max(self._pause_started, self._paused_until) <= (
            RATE_LIMIT_EPISODE_S
        )
        self._level = min(self._level + 1, len(self._windows)) if episode_continues else 1
        for w in self._windows[: self._level]:
            w.fill(now)
        pause = (hint + self.retry_after_pad) * (1.0 + self._rng.uniform(0.0, PAUSE_JITTER))
        self._pause_started = now
        self._paused_until = max(self._paused_until, now + pause)
        self._ramp = 1
        logger.warning(
            "PangoCDP answered 429 (retry-after %s): the quota model was wrong or another client "
            "shares the quota; pausing all senders for %.1f s, modeling the %s as full",
            "absent" if retry_after is None else f"{retry_after:g} s",
            self._paused_until - now,
            ", ".join(f"{w.capacity}/{w.limit.period:g}s" for w in self._windows[: self._level])
            or "(no windows)",
        )
        for waiter in list(self._waiters):
            if waiter.deadline <= self._paused_until and not waiter.future.done():
                waiter.future.set_exception(
                    QuotaWaitError(retry_after=self._paused_until - now, budget=waiter.budget)
                )
        if self._waiters and self._loop is not None:
            self._wake_head(now)
        return self._paused_until

    def on_remaining(self, remaining: int, reservation: Reservation | None = None) -> int:
        """``X-Rate-Limit-Remaining`` from a success. It tightens the model, and loosens only
        what a 429 made up: a window modeled full that allows fewer sends than the server says
        every window has left goes back to its own record.

        The server's number is the smallest token count over its windows. Our own sends since
        ``reservation`` started (its round trip) and those still in flight may or may not be in
        the server's count, so they are counted as ours; if the server reports less than that
        leaves, somebody else spends the same quota: each window is charged the difference.
        Returns the number of sends charged.
        """
        if remaining < 0:
            return 0  # not a count: ignore it
        now = self.now()
        lookback = 0.0 if reservation is None else max(0.0, now - reservation.stamp)
        in_flight = len(self._in_flight)
        # A fill (after a 429) that allows fewer than the server says it has left was too
        # pessimistic: a stray 429 must not hold a window down for its whole span.
        relaxed = [w.relax(now, remaining - in_flight) for w in self._windows]
        if any(relaxed) and self._waiters and self._loop is not None:
            self._wake_head(now)
        model = min(
            (w.remaining(now, lookback) for w in self._windows), default=remaining
        ) - in_flight
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
        if self._waiters and self._loop is not None:
            self._wake_head(now)
        return deficit

    def drain(self) -> None:
        """Model every window as full now, refilling at its own pace (a cold start while the
        quota may have been used elsewhere)."""
        now = self.now()
        for w in self._windows:
            w.fill(now)

    # --- state -------------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """A JSON-able snapshot, with times in epoch seconds so another process can load it.

        Bounded whatever the run's length (a few KiB for the documented windows): times are
        whole milliseconds, delta-encoded. Sends in flight are counted (``in_flight``) and
        charged when the state is loaded.
        """
        now = self.now()
        wall = self._wall_clock()
        to_wall = wall - now
        in_flight = len(self._in_flight)
        windows = []
        for w in self._windows:
            w.expire(now)
            saved = w.export(to_wall)
            windows.append(saved)
        return {
            "version": STATE_VERSION,
            "policy": self.policy,
            "saved_at": wall,
            "in_flight": in_flight,
            "unsaved_limit": 2 * self._save_every,
            "paused_until": (
                self._paused_until + to_wall if math.isfinite(self._paused_until) else None
            ),
            "pause_started": (
                self._pause_started + to_wall if math.isfinite(self._pause_started) else None
            ),
            "level": self._level,
            "windows": windows,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Load a snapshot from :meth:`export_state` (possibly of another process).

        The wall clock may have been stepped between save and load. Saved times are read as if
        it moved forward by up to ``clock_step_allowance`` more than it shows, so a forward step
        that large cannot make old sends look older than they are; and nothing is placed after
        now, so a backward step never blocks longer than a window's own span. Sends in flight at
        the save, and up to ``unsaved_limit`` sends made after it and before a crash, are charged
        at once: the count errs on the safe side. The snapshot is merged into what this
        scheduler already knows (the larger count wins), never replacing it. Windows are matched
        by capacity and period; unknown ones are ignored. A snapshot that is not what
        :meth:`export_state` writes (negative counts, a pause longer than any 429 can cause, ...)
        raises ``ValueError`` and changes nothing.
        """
        _check_state(state, (self.max_retry_after + self.retry_after_pad) * (1 + PAUSE_JITTER))
        now = self.now()
        saved_at = float(state["saved_at"])
        elapsed = self._wall_clock() - saved_at  # what the wall clock shows; may be stepped
        believed = max(0.0, elapsed - self.clock_step_allowance)
        to_local = (now - believed) - saved_at  # saved_at maps to now - believed, never later
        saved = {(int(s["max_requests"]), float(s["period"])): s for s in state["windows"]}
        charge = int(state.get("in_flight", 0)) + int(state.get("unsaved_limit", 0))
        for w in self._windows:
            window_state = saved.get((w.capacity, w.limit.period))
            if window_state is not None:
                w.restore(window_state, to_local, now)
            w.add_phantoms(now, charge)
        for key, attr in (("paused_until", "_paused_until"), ("pause_started", "_pause_started")):
            value = state.get(key)
            if value is not None:
                # A pause keeps its length from the save on, read with the same allowance.
                setattr(self, attr, max(getattr(self, attr), float(value) + to_local))
        self._level = max(self._level, int(state.get("level", 0)))
        if self._paused_until > now:
            self._ramp = 1  # a pause under way: resume with one probe, as its process would
        self._loaded = True

    def _load(self) -> None:
        self._loaded = True
        store = self._store
        assert store is not None
        try:
            state = store.load()
            if state is None:
                logger.info("no saved quota state: assuming nothing used this API key in the "
                            "last day (call drain() if something may have)")
                return
            self.import_state(state)
        except Exception as exc:  # corrupt or foreign: never crash a request over it
            logger.warning(
                "could not read the saved quota state from %r (%s: %s); starting as if every "
                "window were full", store, type(exc).__name__, exc,
            )
            self.drain()
            return
        logger.info("restored quota state saved %.0f s ago",
                    self._wall_clock() - float(state["saved_at"]))

    def _save_soon(self) -> None:
        """Save in the background: the snapshot is taken now (bounded, cheap); encoding and
        writing run in a thread, one save at a time, so the loop is never held up by the disk."""
        if self._saving is not None and not self._saving.done():
            return  # the next save comes after the next save_every sends
        self._unsaved = 0
        state = self.export_state()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # try_reserve() outside a loop: write in place
            assert self._store is not None
            self._store.save(state)
            return
        self._saving = loop.create_task(self._write(state))

    async def _write(self, state: dict[str, Any]) -> None:
        store = self._store
        assert store is not None
        try:
            await asyncio.to_thread(store.save, state)
        except Exception as exc:
            logger.warning("could not save the quota state to %r: %s", store, exc)

    async def save(self, *, clean: bool = False) -> None:
        """Write the state to the store now (after any save already under way). ``clean=True``
        (on close) marks that no send after it is missing."""
        if self._store is None:
            return
        if self._saving is not None and not self._saving.done():
            await asyncio.shield(self._saving)
        state = self.export_state()
        if clean:
            state["unsaved_limit"] = 0
        self._unsaved = 0
        await self._write(state)

    async def close(self) -> None:
        """Stop the timer, fail queued waiters with CancelledError, save the state."""
        self._disarm()
        while self._waiters:
            self._waiters.popleft().future.cancel()
        if self._store is not None and self._loaded:
            await self.save(clean=not self._in_flight)

    # --- introspection -----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Sends started and not yet completed."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Senders queued for a slot."""
        return len(self._waiters)

    def window_usage(self) -> list[tuple[RateLimit, int]]:
        """Sends counted in each window now (in flight included)."""
        now = self.now()
        in_flight = len(self._in_flight)
        return [(w.limit, w.used(now) + in_flight) for w in self._windows]

    def next_free(self) -> float:
        """Seconds from now until a new send could start (0 if now; inf until a completion)."""
        now = self.now()
        return max(0.0, self._due(now) - now)

    def memory_entries(self) -> int:
        """Entries the windows hold in memory (bounded whatever the run's length)."""
        return sum(w.entries() for w in self._windows)

    def __repr__(self) -> str:
        try:
            now = self.now()
        except RuntimeError:  # no running loop and no clock: show the configuration only
            windows = ", ".join(f"{w.capacity}/{w.limit.period:g}s" for w in self._windows)
            return f"QuotaScheduler(policy={self.policy!r}, windows=[{windows}])"
        usage = ", ".join(
            f"{lim.max_requests}/{lim.period:g}s: {used} used"
            for lim, used in self.window_usage()
        )
        paused = max(0.0, self._paused_until - now)
        return (
            f"QuotaScheduler(policy={self.policy!r}, windows=[{usage}], "
            f"next_free=+{self.next_free():.3f}s, in_flight={len(self._in_flight)}, "
            f"waiters={len(self._waiters)}, paused={paused:.3f}s, "
            f"rate_limited={self.rate_limited})"
        )


def _check_state(state: object, longest_pause: float) -> None:
    """Raise ValueError unless ``state`` has the shape and ranges :meth:`export_state` writes."""
    def fail(why: str) -> NoReturn:
        raise ValueError(f"not a quota state: {why}")

    def count(value: object, name: str, upper: int = 10**9) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
            fail(f"{name} must be an integer from 0 to {upper}, got {value!r}")

    def number(value: object, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value
        ):
            fail(f"{name} must be a finite number, got {value!r}")
        return float(value)

    if not isinstance(state, dict):
        fail(f"expected an object, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        fail(f"unsupported version {state.get('version')!r}")
    saved_at = number(state.get("saved_at"), "saved_at")
    for name in ("in_flight", "unsaved_limit", "level"):
        count(state.get(name, 0), name)
    for name in ("paused_until", "pause_started"):
        value = state.get(name)
        if value is not None and number(value, name) > saved_at + longest_pause:
            fail(f"{name} lies further ahead than any 429 can pause")
    windows = state.get("windows")
    if not isinstance(windows, list):
        fail("windows must be a list")
    for i, window in enumerate(windows):
        if not isinstance(window, dict):
            fail(f"windows[{i}] must be an object")
        count(window.get("max_requests"), f"windows[{i}].max_requests")
        if number(window.get("period"), f"windows[{i}].period") <= 0:
            fail(f"windows[{i}].period must be > 0")
        if "ms" in window:
            ms, n = window.get("ms"), window.get("n")
            if not isinstance(ms, list) or not isinstance(n, list) or len(ms) != len(n):
                fail(f"windows[{i}]: ms and n must be lists of one length")
            for j, (delta, sends) in enumerate(zip(ms, n, strict=True)):
                count(delta, f"windows[{i}].ms[{j}]", 10**15)
                count(sends, f"windows[{i}].n[{j}]")
            if window.get("fill_at") is not None:
                number(window.get("fill_at"), f"windows[{i}].fill_at")
                count(window.get("fill_sends", 0), f"windows[{i}].fill_sends")
        elif "tokens" in window:
            number(window.get("tokens"), f"windows[{i}].tokens")
            if window.get("at") is not None:
                number(window.get("at"), f"windows[{i}].at")
        else:
            fail(f"windows[{i}] has neither sends nor tokens")
