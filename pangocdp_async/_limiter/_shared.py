"""SharedQuotaScheduler: one quota for many processes, kept in a backend (SQLite or Redis).

Each process keeps a FIFO of its own senders; only the head asks the backend for a slot, and
the backend applies every process's operations one at a time with the local scheduler's rules
(see ``_backend.py``). This process's operations reach the backend in the order they were made,
one at a time, from one worker task: a 429 reported before a reservation is applied before it.

When the backend cannot be reached (``on_backend_down``):

- ``"wait"`` (default): nothing is sent. The head retries with exponential backoff (50 ms up to
  2 s); completions and 429s wait in order and are applied when it is back. A warning is logged
  when it goes and when it returns, and ``backend_down`` / ``backend_errors`` say so (in
  ``client.stats`` too).
- ``"local-share"``: sends go on, paced by a local scheduler that holds ``1/local_share`` of
  each window (one share per process: set ``local_share`` to the number of processes). Logged
  as an error. When the backend is back, what the local share sent is charged to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from .._config import DOCUMENTED_LIMITS, Margin, RateLimit, validate_rate_limits
from .._constants import DEFAULT_MAX_RETRY_AFTER_S, PAUSE_JITTER, RETRY_AFTER_PAD_S
from .._exceptions import QuotaWaitError
from .._validate import check_bool, check_int, check_seconds
from ._backend import QuotaBackend, QuotaBackendError, QuotaConfig, namespace_for, new_lease_id
from ._scheduler import Policy, QuotaScheduler, Reservation

__all__ = ["BackendDownPolicy", "SharedQuotaScheduler"]

logger = logging.getLogger("pangocdp_async")

BackendDownPolicy = Literal["wait", "local-share"]

#: A lease outlives any request: a send still unanswered after it counts as answered then.
DEFAULT_LEASE_TTL_S = 120.0
#: While every slot is held by sends in flight (of any process), the head asks again this often.
DEFAULT_POLL_INTERVAL_S = 0.01
#: Backoff while the backend is unreachable.
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0
#: Usage shown by window_usage()/next_free() is refreshed at most this often.
USAGE_REFRESH_S = 0.5
_INF = math.inf
_NEG_INF = -math.inf


class _FallBack(Exception):
    """Internal: the backend is down and a local share paces meanwhile."""


@dataclass(slots=True)
class _Op:
    run: Callable[[], Awaitable[Any]]
    kind: str
    future: asyncio.Future[Any] | None = None
    done: Callable[[Any], None] | None = field(default=None)
    #: A reservation's lease name; ``tried``: a try failed, so the backend may hold the lease.
    lease: int | None = None
    tried: bool = False


def _settle(future: asyncio.Future[Any] | None, result: Any = None,
            exc: BaseException | None = None) -> bool:
    """Hand a result to a waiter that is still there; False if it left (cancelled, timed out)."""
    if future is None or future.done():
        return False
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
    return True


class SharedQuotaScheduler:
    """Paces requests so that no window is exceeded by *all* the processes sharing ``backend``
    together: every process that opens the same SQLite file (one host) or the same Redis (any
    number of hosts) with the same API key paces against one quota.

    It is used like :class:`QuotaScheduler` (``reserve`` / ``complete`` / ``slot``, the same
    ``limits``, ``policy`` and ``margin``; every process must pass the same ones, or the backend
    refuses with :class:`QuotaConfigError`). Given to :class:`PangoCDPClient` as ``limiter=``, it
    is bound to the client's API key: the quota's name in the backend is a hash of the key.
    Outside a client, pass ``namespace=``.

    >>> from pangocdp_async import SharedQuotaScheduler, SQLiteQuotaBackend   # doctest: +SKIP
    >>> limiter = SharedQuotaScheduler(SQLiteQuotaBackend("/var/tmp/pangocdp.quota"))
    ... # doctest: +SKIP
    >>> async with PangoCDPClient(limiter=limiter) as client: ...              # doctest: +SKIP
    """

    def __init__(
        self,
        backend: QuotaBackend,
        limits: Sequence[RateLimit] = DOCUMENTED_LIMITS,
        *,
        policy: Policy = "sliding",
        margin: Margin | None = None,
        namespace: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL_S,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        on_backend_down: BackendDownPolicy = "wait",
        local_share: int | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S,
        retry_after_pad: float = RETRY_AFTER_PAD_S,
        count_rejected: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        for method in ("bind", "reserve", "complete", "rate_limited", "remaining", "usage"):
            if not callable(getattr(backend, method, None)):
                raise TypeError(f"backend must be a quota backend (SQLiteQuotaBackend, "
                                f"RedisQuotaBackend), got {type(backend).__name__}")
        if policy not in ("sliding", "token-bucket"):
            raise ValueError(f"policy must be 'sliding' or 'token-bucket', got {policy!r}")
        if margin is not None and not isinstance(margin, Margin):
            raise TypeError(f"margin must be a Margin, got {type(margin).__name__}")
        check_seconds("lease_ttl", lease_ttl, allow_zero=False)
        check_seconds("poll_interval", poll_interval, allow_zero=False)
        check_seconds("max_retry_after", max_retry_after, allow_zero=False)
        check_seconds("retry_after_pad", retry_after_pad)
        check_bool("count_rejected", count_rejected)
        if on_backend_down not in ("wait", "local-share"):
            raise ValueError(
                f"on_backend_down must be 'wait' or 'local-share', got {on_backend_down!r}")
        if on_backend_down == "local-share":
            if local_share is None:
                raise ValueError("on_backend_down='local-share' needs local_share= (the number "
                                 "of processes sharing the quota)")
            check_int("local_share", local_share, low=1)
        elif local_share is not None:
            raise ValueError("local_share= applies only with on_backend_down='local-share'")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ValueError("namespace must be a non-empty string")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        self.limits = validate_rate_limits(limits)
        self.policy: Policy = policy
        self.margin = margin if margin is not None else Margin()
        self.backend = backend
        self.config = QuotaConfig.build(self.limits, policy, self.margin, count_rejected)
        self.lease_ttl = float(lease_ttl)
        self.poll_interval = float(poll_interval)
        self.on_backend_down: BackendDownPolicy = on_backend_down
        self.local_share = local_share
        self.max_retry_after = float(max_retry_after)
        self.retry_after_pad = float(retry_after_pad)
        self.count_rejected = count_rejected
        owner = getattr(backend, "_pangocdp_scheduler", None)
        if owner is not None and owner() is not None:
            raise ValueError(f"{backend!r} already serves another SharedQuotaScheduler: give "
                             "each scheduler its own backend object (they may open the same "
                             "file or Redis)")
        with contextlib.suppress(AttributeError, TypeError):
            backend._pangocdp_scheduler = weakref.ref(self)  # type: ignore[attr-defined]
        self._rng = rng if rng is not None else random.Random()
        self._namespace = namespace
        self._named = namespace is not None
        self._bound = False
        #: Closing fails the waiters of the moment: each reserve() notes the generation it began in.
        self._generation = 0
        #: The backend's clock minus the loop's, as of the last answer (None: never answered).
        self._offset: float | None = None
        self._fallback: QuotaScheduler | None = None
        self._granted: dict[int, tuple[float, int | None, Reservation | None]] = {}
        self._seq = 0
        self._ops: deque[_Op] = deque()
        self._running: _Op | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._changed: asyncio.Event | None = None
        self._usage: list[int] = [0] * len(self.limits)
        self._due_in = 0.0
        self._usage_at = _NEG_INF
        self._usage_pending = False
        #: Counters, for stats and tests.
        self.reservations = 0
        self.rate_limited = 0
        self.tightened = 0
        self.expired_leases = 0
        self.backend_errors = 0
        #: Since when (on the loop's clock) the backend has not answered; None while it does.
        self.backend_down_since: float | None = None

    @property
    def backend_name(self) -> str:
        """Where the quota lives: ``"sqlite"`` or ``"redis"``."""
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    @property
    def namespace(self) -> str | None:
        """The quota's name in the backend (a hash of the API key), once known."""
        return self._namespace

    def bind_credential(self, api_key: str) -> None:
        """Name the quota after ``api_key`` (a hash of it), unless ``namespace=`` was given.
        A scheduler paces one quota: binding it to a second key raises ``ValueError``."""
        ns = namespace_for(api_key)
        if self._named:
            return  # namespace= names the quota, whatever the key
        if self._namespace is None:
            self._namespace = ns
        elif self._bound and self._namespace != ns:
            raise ValueError("this SharedQuotaScheduler already paces another API key's quota; "
                             "give each API key its own scheduler")
        self._bound = True

    def __repr__(self) -> str:
        state = "down" if self.backend_down_since is not None else "up"
        return (f"SharedQuotaScheduler(backend={self.backend!r}, policy={self.policy!r}, "
                f"windows=[{', '.join(f'{w.max_requests}/{w.period:g}s' for w in self.limits)}]"
                f", backend {state}, in_flight={len(self._granted)}, "
                f"waiting={len(self._waiters)})")

    # --- the op queue ------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed() and (
                    self._granted or self._waiters):
                raise RuntimeError("this SharedQuotaScheduler has senders waiting or in flight "
                                   "on another event loop; a scheduler serves one loop at a time")
            self._loop = loop
            self._worker = None
            self._changed = asyncio.Event()
            # Completions and 429s made on a loop that ended are applied on this one; what a
            # waiter of that loop awaited has nobody waiting for it any more.
            # A reservation may have been applied as that loop ended: its lease goes back.
            kept: list[_Op] = []
            for op in self._ops:
                if op.future is None and op.kind != "usage":
                    kept.append(op)
                elif op.kind == "reserve" and op.lease is not None:
                    kept.append(_Op(self._release(op.lease), "release"))
            # Sends granted on it and never completed may have reached the server: counted.
            for stamp, lease, _ in self._granted.values():
                if lease is not None:
                    kept.append(_Op(functools.partial(self.backend.complete, lease, stamp, True,
                                                      False), "complete"))
            self._granted.clear()
            self._fallback = None
            self._ops.clear()
            self._ops.extend(kept)
            self._waiters.clear()
            self._usage_pending = False
        if self._namespace is None:
            raise RuntimeError("SharedQuotaScheduler: pass namespace=, or give it to a "
                               "PangoCDPClient (which names the quota after its API key)")
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())

    def _submit(self, kind: str, run: Callable[[], Awaitable[Any]], *, wait: bool,
                done: Callable[[Any], None] | None = None,
                lease: int | None = None) -> asyncio.Future[Any] | None:
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future() if wait else None
        self._ops.append(_Op(run, kind, future, done, lease))
        return future

    async def _work(self) -> None:
        ops = self._ops
        backoff = RETRY_INITIAL_S
        self.backend.bind(self._namespace or "", self.config)
        while ops:
            op = self._running = ops[0]
            if op.future is not None and op.future.done():
                ops.popleft()  # its waiter left (cancelled, past its max_wait, closed)
                if op.tried and op.lease is not None:
                    ops.appendleft(_Op(self._release(op.lease), "release"))
                continue
            try:
                result = await op.run()
            except QuotaBackendError as exc:
                op.tried = True
                self._went_down(exc, backoff)
                if self.on_backend_down == "local-share":
                    self._fall_back()
                await asyncio.sleep(backoff * (0.5 + self._rng.random() / 2))
                backoff = min(RETRY_MAX_S, backoff * 2)
                if not ops and self.on_backend_down == "local-share":
                    ops.append(_Op(self.backend.usage, "probe"))
                continue
            except Exception as exc:  # a configuration conflict, a bug: tell the waiter
                ops.popleft()
                if op.future is None:
                    self._usage_pending = self._usage_pending and op.kind != "usage"
                    logger.error("quota backend %r: %s failed: %s", self.backend, op.kind, exc)
                elif not _settle(op.future, exc=exc):
                    logger.error("quota backend %r: %s failed after its waiter left: %s",
                                 self.backend, op.kind, exc)
                continue
            backoff = RETRY_INITIAL_S
            ops.popleft()
            if self.backend_down_since is not None:
                await self._came_back()
            if op.kind == "reserve":
                now_b, lease, _ = result
                assert self._loop is not None
                self._offset = now_b - self._loop.time()
                if not _settle(op.future, result) and lease is not None:
                    # granted to a waiter that left: give the slot back
                    ops.appendleft(_Op(self._release(lease), "release"))
                continue
            if op.done is not None:
                op.done(result)
            _settle(op.future, result)

    def _fall_back(self) -> None:
        """local-share: every reservation queued for the backend goes to the local share
        (a completion failing ahead of them must not hold them up for the outage)."""
        keep: list[_Op] = []
        for op in self._ops:
            if op.kind == "reserve" and _settle(op.future, exc=_FallBack()):
                if op.tried and op.lease is not None:
                    keep.append(_Op(self._release(op.lease), "release"))
                continue
            keep.append(op)
        self._ops.clear()
        self._ops.extend(keep)

    def _release(self, lease: int) -> Callable[[], Awaitable[None]]:
        return lambda: self.backend.complete(lease, _NEG_INF, False, False)

    def _went_down(self, exc: Exception, backoff: float) -> None:
        self.backend_errors += 1
        if self.backend_down_since is not None:
            return
        assert self._loop is not None
        self.backend_down_since = self._loop.time()
        if self.on_backend_down == "local-share":
            assert self.local_share is not None
            logger.error(
                "quota backend %r unreachable (%s): pacing this process on a local 1/%d share "
                "of each window until it answers", self.backend, exc, self.local_share)
        else:
            logger.warning(
                "quota backend %r unreachable (%s): holding every send until it answers "
                "(retrying with backoff)", self.backend, exc)

    async def _came_back(self) -> None:
        assert self._loop is not None
        assert self.backend_down_since is not None
        gone = self._loop.time() - self.backend_down_since
        self.backend_down_since = None
        fallback = self._fallback
        if fallback is not None:
            # What the local share sent (and still has in flight) is charged to the quota.
            counts = [used for _, used in fallback.window_usage()]
            self._ops.appendleft(_Op(lambda: self.backend.charge(counts), "charge"))
            logger.warning("quota backend %r is back after %.1f s; charging it the %s sends "
                           "made on the local share", self.backend, gone, max(counts, default=0))
        else:
            logger.warning("quota backend %r is back after %.1f s", self.backend, gone)
        if self._changed is not None:
            self._changed.set()

    def _local_share(self) -> QuotaScheduler:
        if self._fallback is None:
            n = self.local_share or 1
            self._fallback = QuotaScheduler(
                [RateLimit(max(1, lim.max_requests // n), lim.period) for lim in self.limits],
                policy=self.policy, margin=self.margin, max_retry_after=self.max_retry_after,
                retry_after_pad=self.retry_after_pad, count_rejected=self.count_rejected,
                rng=self._rng)
        return self._fallback

    # --- the reservation -------------------------------------------------------------------
    async def reserve(self, *, max_wait: float | None = None) -> Reservation:
        """Wait for a slot in this process's FIFO and in the shared quota; the send starts when
        this returns. As :meth:`QuotaScheduler.reserve` (``max_wait`` raises
        :class:`QuotaWaitError`; a cancelled waiter takes nothing: a slot granted as it is
        cancelled goes back to the quota)."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        generation = self._generation
        start = loop.time()
        budget = _INF if max_wait is None else float(max_wait)
        deadline = start + budget
        turn = loop.create_future()
        waiters = self._waiters
        waiters.append(turn)
        try:
            if len(waiters) > 1:
                await turn  # the head wakes the next one when it leaves
            while True:
                self._check_open(generation)
                if self.backend_down_since is not None and self.on_backend_down == "local-share":
                    return await self._reserve_locally(deadline - loop.time())
                lease_id = new_lease_id()
                future = self._submit("reserve",
                                      functools.partial(self.backend.reserve, self.lease_ttl,
                                                        lease_id), wait=True, lease=lease_id)
                assert future is not None
                try:
                    answered = await self._answer(future, deadline - loop.time())
                except _FallBack:
                    continue
                if answered is None:
                    raise QuotaWaitError(retry_after=budget, budget=budget)
                now_b, lease, due = answered
                if lease is not None:
                    self._seq += 1
                    self._granted[self._seq] = (now_b, lease, None)
                    self.reservations += 1
                    return Reservation(now_b, self._seq)
                wait = due - now_b
                now = loop.time()
                if deadline < now + wait < _INF:
                    raise QuotaWaitError(retry_after=wait, budget=budget)
                if wait == _INF:
                    wait = self.poll_interval
                await self._nap(min(wait, max(0.0, deadline - now)))
                if loop.time() >= deadline:
                    raise QuotaWaitError(retry_after=self.poll_interval, budget=budget)
        finally:
            head = bool(waiters) and waiters[0] is turn
            with contextlib.suppress(ValueError):
                waiters.remove(turn)
            if head and waiters and not waiters[0].done():
                waiters[0].set_result(None)

    def _check_open(self, generation: int) -> None:
        if generation != self._generation:
            raise asyncio.CancelledError("the SharedQuotaScheduler was closed")

    async def _answer(self, future: asyncio.Future[Any], left: float) -> Any:
        """The backend's answer to a reservation, or None past ``left`` seconds. Leaving early
        (cancelled, timed out) gives back a lease already granted, or has the worker give it
        back when the answer comes."""
        try:
            done, _ = await asyncio.wait((future,), timeout=None if left == _INF
                                         else max(0.0, left))
        except BaseException:
            self._leave(future)
            raise
        if not done:
            self._leave(future)
            return None
        return future.result()

    def _leave(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            future.cancel()  # the worker sees it and releases whatever it is granted
            return
        if future.cancelled() or future.exception() is not None:
            return
        _, lease, _ = future.result()
        if lease is not None:
            self._submit("release", self._release(lease), wait=False)

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if this process completes a send meanwhile."""
        changed = self._changed
        assert changed is not None
        changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)

    async def _reserve_locally(self, left: float) -> Reservation:
        local = self._local_share()
        r = await local.reserve(max_wait=None if left == _INF else max(0.0, left))
        if self.backend_down_since is None:
            # Back while this one waited on the share: what the share sent was charged when it
            # came back, without this send, which is charged now.
            self._submit("charge", lambda: self.backend.charge([1] * len(self.limits)),
                         wait=False)
        self._seq += 1
        self._granted[self._seq] = (r.stamp, None, r)
        self.reservations += 1
        # The stamp the backend will compare (a 429's, a remaining count's) is on its clock: the
        # loop's time moved by the offset last seen; +inf (taken as new) if it never answered.
        offset = self._offset
        assert self._loop is not None
        stamp = _INF if offset is None else self._loop.time() + offset
        return Reservation(stamp, self._seq)

    def try_reserve(self) -> Reservation | None:
        """Always ``None``: a shared slot takes a round trip to the backend (use
        :meth:`reserve`)."""
        return None

    def complete(
        self, reservation: Reservation, *, counted: bool = True, rejected: bool = False
    ) -> None:
        """The answer to ``reservation``'s request is in: as :meth:`QuotaScheduler.complete`.
        The backend hears of it in the background, in order."""
        entry = self._granted.pop(reservation.seq, None)
        if entry is None:
            return
        stamp, lease, local = entry
        if local is not None:
            assert self._fallback is not None
            self._fallback.complete(local, counted=counted, rejected=rejected)
        else:
            assert lease is not None
            self._submit("complete",
                         lambda: self.backend.complete(lease, stamp, counted, rejected),
                         wait=False)
        if self._changed is not None:
            self._changed.set()

    @asynccontextmanager
    async def slot(self, *, max_wait: float | None = None) -> AsyncIterator[Reservation]:
        """``async with scheduler.slot(): await send()``."""
        reservation = await self.reserve(max_wait=max_wait)
        try:
            yield reservation
        finally:
            self.complete(reservation)

    # --- feedback from the server ----------------------------------------------------------
    def on_rate_limited(
        self, retry_after: float | None, reservation: Reservation | None = None
    ) -> float:
        """A 429: every process pauses (the pause is kept in the backend). Returns this process's
        estimate of the pause's length in seconds (the backend's answer follows)."""
        self.rate_limited += 1
        hint = 0.0 if retry_after is None else float(retry_after)
        if math.isnan(hint) or hint < 0:
            hint = 0.0
        if hint > self.max_retry_after:
            logger.warning("429 says retry after %.3g s; capping the pause at "
                           "max_retry_after=%.0f s", hint, self.max_retry_after)
            hint = self.max_retry_after
        pause = (hint + self.retry_after_pad) * (1.0 + self._rng.uniform(0.0, PAUSE_JITTER))
        stamp = None if reservation is None else reservation.stamp
        if self._fallback is not None and self.backend_down_since is not None:
            self._fallback.on_rate_limited(retry_after, None)

        def done(result: tuple[float, float]) -> None:
            now_b, until = result
            logger.warning(
                "PangoCDP answered 429 (retry-after %s): pausing every process sharing the "
                "quota for %.1f s", "absent" if retry_after is None else f"{retry_after:g} s",
                max(0.0, until - now_b))

        self._submit("rate_limited", lambda: self.backend.rate_limited(stamp, pause),
                     wait=False, done=done)
        return pause

    def on_remaining(self, remaining: int, reservation: Reservation | None = None) -> int:
        """``X-Rate-Limit-Remaining`` from a success: applied in the backend (relax a fill the
        server contradicts, charge a deficit to every process's windows). Returns 0 (the
        backend's answer comes later; ``tightened`` counts the charged sends)."""
        if remaining < 0:
            return 0
        stamp = None if reservation is None else reservation.stamp

        def done(deficit: int) -> None:
            if deficit > 0:
                self.tightened += deficit
                logger.info("server reports %d requests left: charging %d unseen sends to the "
                            "shared quota", remaining, deficit)

        self._submit("remaining", lambda: self.backend.remaining(remaining, stamp),
                     wait=False, done=done)
        return 0

    async def drain(self) -> None:
        """Model every window as full now, for every process (a cold start while the quota may
        have been used elsewhere)."""
        future = self._submit("drain", self.backend.drain, wait=True)
        assert future is not None
        await future

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the backend has applied every operation made so far (at most ``timeout``
        seconds); returns whether it has. Nothing to do before the first operation."""
        if self._worker is None or (self._worker.done() and not self._ops):
            return True
        future = self._submit("flush", _nothing, wait=True)
        assert future is not None
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Fail the senders waiting for a slot with CancelledError, apply the pending
        completions and 429s (for up to ``2 s`` if the backend is down), release the backend's
        connections. The scheduler can be used again afterwards."""
        self._generation += 1
        if (self._ops or self._granted) and self._loop is not asyncio.get_running_loop():
            with contextlib.suppress(RuntimeError):  # (the other loop still serves: its own)
                self._ensure_worker()  # what an ended loop left queued or in flight: applied
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.cancel()
        for op in self._ops:
            if op.kind in ("reserve", "usage") and op.future is not None:
                op.future.cancel()
        if self._fallback is not None:
            await self._fallback.close()  # (fails a head waiting on the local share)
        if self._changed is not None:
            self._changed.set()
        try:
            if self._worker is not None and not self._worker.done() and self._loop is not None \
                    and self._loop is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._worker), RETRY_MAX_S)
        finally:
            if self._worker is not None and not self._worker.done() \
                    and self._loop is asyncio.get_running_loop():
                self._worker.cancel()
                left = [op for op in self._ops if op.kind != "usage"]
                running = self._running
                if running is not None and running.kind == "reserve" \
                        and running.lease is not None:
                    # It may still be applied (a SQLite transaction in its thread): one try to
                    # give the lease back after it.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._release(running.lease)(), 1.0)
                        left.remove(running)
                if left:
                    logger.warning("quota backend %r: %d operations (%s) not applied at close "
                                   "(a lease expires after %.0f s)", self.backend, len(left),
                                   ", ".join(sorted({op.kind for op in left})), self.lease_ttl)
            for op in self._ops:
                if op.future is not None:
                    op.future.cancel()
            self._ops.clear()
        close = getattr(self.backend, "close", None)
        if close is not None:
            await close()

    # --- introspection ---------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """This process's sends started and not yet completed."""
        return len(self._granted)

    @property
    def waiting(self) -> int:
        """This process's senders waiting for a slot."""
        return len(self._waiters)

    def _refresh_usage(self) -> None:
        if self._usage_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop.time() - self._usage_at < USAGE_REFRESH_S:
            return

        def done(result: tuple[float, list[int], int, float]) -> None:
            now_b, used, _, due = result
            self._usage = list(used)
            self._due_in = max(0.0, due - now_b)
            self._usage_at = loop.time()
            self._usage_pending = False

        self._submit("usage", self.backend.usage, wait=False, done=done)
        # (after _submit: binding to a new loop clears it, and if it raises nothing is asked)
        self._usage_pending = True

    def window_usage(self) -> list[tuple[RateLimit, int]]:
        """Sends counted in each window by every process (in flight included), as of the last
        refresh (at most ``0.5 s`` old while it is asked for)."""
        self._refresh_usage()
        return list(zip(self.limits, self._usage, strict=True))

    def next_free(self) -> float:
        """Seconds until a new send could start, as of the last refresh."""
        self._refresh_usage()
        return self._due_in

    async def usage(self) -> list[tuple[RateLimit, int]]:
        """Sends counted in each window by every process now (asks the backend)."""
        future = self._submit("usage", self.backend.usage, wait=True)
        assert future is not None
        _, used, _, _ = await future
        return list(zip(self.limits, used, strict=True))


async def _nothing() -> None:
    return None
