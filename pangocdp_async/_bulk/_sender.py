"""One batch -> its outcome: retries by the policy, the search for refused entries, and the
report's entries for it. Sends through an injected callable; knows nothing of the client."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

from .._batching import Batch, EntryEncoder
from .._constants import GATEWAY_STATUSES
from .._exceptions import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    PangoCDPError,
    QuotaWaitError,
    RateLimitedError,
    RedirectError,
)
from .._results import IngestResult
from .._retry import Decision, RetryPolicy, backoff_delay, decide
from .._stats import StatsRecorder
from ._ledger import Ledger, SenderState

__all__ = ["ENVELOPE_REFUSALS_TO_STOP", "BatchSender", "RunRefused", "SendBody", "Stopped",
           "reason_of"]

logger = logging.getLogger("pangocdp_async")

# A server message that names the refused entry, such as "entries[7]: Missing momCode".
_ENTRY_INDEX = re.compile(r"entries\s*\[\s*(\d+)\s*\]")


#: Batches refused whole, in a row, for their envelope before the run stops (every further
#: batch would be refused the same way, and each costs quota).
ENVELOPE_REFUSALS_TO_STOP = 3


class RunRefused(Exception):
    """Every further batch would be refused alike (batch after batch refused for its envelope,
    or the credentials refused): the run stops; ``error`` says why."""

    def __init__(self, error: PangoCDPError) -> None:
        super().__init__(str(error))
        self.error = error


class Stopped(Exception):
    """The run is stopping: no new request is started; the batch is left as it is."""


class SendBody(Protocol):
    """One encoded request through the quota scheduler and the transport (the client's)."""

    def __call__(self, body: bytes, *, entries: int, init_data: bool, max_wait: float | None,
                 tracker: SenderState) -> Awaitable[IngestResult]: ...


class BatchSender:
    """Delivers batches until each record is accepted, failed (with the error) or in doubt."""

    def __init__(self, send: SendBody, *, encoder: EntryEncoder, init_data: bool,
                 retry: RetryPolicy, ledger: Ledger, stats: StatsRecorder,
                 stopping: Callable[[], bool]) -> None:
        self._send = send
        self._stopping = stopping
        #: Batches refused whole for their envelope since the last accepted one.
        self.envelope_refusals = 0
        self._encoder = encoder
        self._init_data = init_data
        self._retry = retry
        self._ledger = ledger
        self._stats = stats
        self._rng = random.Random()  # the backoff's jitter

    async def deliver(self, batch: Batch, state: SenderState, *,
                      isolate: bool = True) -> PangoCDPError | None:
        """Send ``batch`` until it is settled. Returns ``None`` if accepted, else the final
        error. With ``isolate=False`` a 400 for several entries is returned unsettled, for the
        caller to search."""
        report = self._ledger.report
        policy = self._retry
        loop = asyncio.get_running_loop()
        first_try = loop.time()
        attempts = 0
        rate_limited = 0
        maybe_sent = False
        body = self._encoder.batch_body(batch)
        while True:
            if self._stopping():
                raise Stopped
            attempts += 1
            # A retry waits for a quota slot within what is left of the batch's budget; the
            # first attempt waits as long as pacing needs.
            max_wait = (None if attempts == 1
                        else max(0.0, policy.time_budget_s - (loop.time() - first_try)))
            posts = state.posts
            try:
                await self._send(body, entries=len(batch), init_data=self._init_data,
                                 max_wait=max_wait, tracker=state)
            except QuotaWaitError as exc:  # nothing was sent this time
                await self._settle_failure(batch, state, exc, maybe_sent)
                return exc
            except PangoCDPError as exc:
                if state.posts > posts:
                    report.requests += state.posts - posts
                    if isinstance(exc, AuthenticationError) and exc.status == 401:
                        # Refused after a token refresh (or a static token): for good.
                        await self._ledger.failed(batch.positions, batch.entries, exc, state)
                        raise RunRefused(exc) from exc
                else:  # the auth call failed: no ingest request was made
                    report.auth_failures += 1
                    if _refused_for_good(exc):
                        # Wrong credentials or a wrong auth_url: every batch would fail alike,
                        # and each retry is an auth call that may lock the account.
                        await self._ledger.failed(batch.positions, batch.entries, exc, state)
                        raise RunRefused(exc) from exc
                if (isinstance(exc, APIConnectionError) and exc.maybe_sent) or (
                    isinstance(exc, APIStatusError) and exc.status in GATEWAY_STATUSES
                ):
                    maybe_sent = True
                if isinstance(exc, RateLimitedError):
                    rate_limited += 1
                    report.rate_limited += 1
                if isinstance(exc, APIStatusError) and exc.status == 413:
                    return await self._too_large(batch, body, state, exc)
                decision = decide(exc, attempts=attempts, rate_limited=rate_limited,
                                  elapsed_s=loop.time() - first_try, entries=len(batch),
                                  policy=policy)
                if decision is Decision.SPLIT and isinstance(exc, BadRequestError):
                    if isolate:
                        outermost = not state.isolating
                        state.isolating = True
                        try:
                            await self._isolate(batch, exc, state, whole=outermost)
                        finally:
                            if outermost:
                                state.isolating = False
                    return exc
                if decision is Decision.FAIL:
                    await self._settle_failure(batch, state, exc, maybe_sent)
                    return exc
                report.retries += 1
                self._stats.retries += 1
                if decision is Decision.RETRY:
                    left = policy.time_budget_s - (loop.time() - first_try)
                    await asyncio.sleep(max(0.0, min(backoff_delay(attempts, policy, self._rng),
                                                     left)))
                continue  # AFTER_PAUSE: the scheduler holds the next reservation back
            report.requests += state.posts - posts
            self._ledger.accepted(batch, state, maybe_duplicate=maybe_sent)
            self.envelope_refusals = 0
            return None

    async def _too_large(self, batch: Batch, body: bytes, state: SenderState,
                         error: APIStatusError) -> PangoCDPError | None:
        """413: the body is too large for the server. Split it in halves and deliver each
        (splitting again as needed); one entry too large on its own fails, naming its size."""
        if len(batch) == 1:
            refused = APIStatusError(
                status=413, error_code=error.error_code, request_id=error.request_id,
                message=(f"entries[{batch.positions[0]}]: the server refuses a request of "
                         f"{len(body):,} bytes with this entry alone as too large"),
            )
            await self._ledger.failed(batch.positions, batch.entries, refused, state)
            return refused
        outermost = not state.isolating
        state.isolating = True
        try:
            left, right = batch.split(len(batch) // 2 + len(batch) % 2)
            left_error = await self.deliver(left, state)
            right_error = await self.deliver(right, state)
        finally:
            if outermost:
                state.isolating = False
        return left_error or right_error

    async def _settle_failure(self, batch: Batch, state: SenderState, error: PangoCDPError,
                              maybe_sent: bool) -> None:
        """A final error: failed, unless an attempt may have stored the batch unanswered (then
        in doubt). A refusal (400) is an answer about the content: always failed."""
        if maybe_sent and not isinstance(error, BadRequestError):
            self._ledger.in_doubt(batch, error, state)
        else:
            await self._ledger.failed(batch.positions, batch.entries, error, state)

    async def _isolate(self, batch: Batch, error: BadRequestError, state: SenderState, *,
                       whole: bool = True) -> None:
        """``batch`` was refused with 400: find the refused entries, deliver the rest.

        When the server's message names the entry (``entries[i]``), that entry is sent alone
        (so it is reported with the server's own verdict) and the rest together: 2 requests.
        Otherwise the batch is searched by halves: the left half is sent; if it is accepted, the
        refused entry must be in the right half, which is searched without being sent whole;
        if it is refused too, it is searched and the right half is delivered on its own. The
        last suspect is always sent alone. One refused entry among 50 costs 6 to 13 extra
        requests, 9.9 on average over its 50 possible places (the lone-entry test for an
        envelope fault costs one of them when the entry is in the left half).
        """
        match = _ENTRY_INDEX.search(error.message or "")
        if match is not None and int(match.group(1)) < len(batch):
            index = int(match.group(1))
            await self.deliver(batch.select([index]), state)
            await self.deliver(batch.without(index), state)
            return
        if whole and len(batch) > 2:
            # (Only for a whole batch: deeper in the search a part refused alike is expected.)
            # The message names no entry. If the left half, then one entry of the right half
            # alone, then one entry of the left half alone are all refused alike, the envelope
            # is at fault (a wrong objectType, a source the account lacks): no entry would pass,
            # so the batch fails after 4 requests instead of a search of about 2 per entry. Bad
            # records alone are taken for that only if both lone entries are bad.
            left, right = batch.split(len(batch) // 2 + len(batch) % 2)
            left_error = await self.deliver(left, state, isolate=False)
            if left_error is not None and _alike(left_error, error):
                lone, right = right.split(1)
                lone_error = await self.deliver(lone, state, isolate=False)
                if lone_error is not None and _alike(lone_error, error):
                    second, left = left.split(1)
                    second_error = await self.deliver(second, state, isolate=False)
                    if second_error is not None and _alike(second_error, error):
                        await self._envelope_refused(batch, state, error)
                        return
                assert isinstance(left_error, BadRequestError)  # (_alike says so)
                if len(left) > 1:
                    await self._isolate(left, left_error, state, whole=False)
                elif left.entries:
                    await self.deliver(left, state)  # the last suspect, alone
                if right.entries:
                    await self.deliver(right, state)
                return
            if left_error is None:
                batch = right  # the culprit is here; do not send it whole
            else:
                if isinstance(left_error, BadRequestError) and len(left) > 1:
                    await self._isolate(left, left_error, state, whole=False)
                await self.deliver(right, state)
                return
        while len(batch) > 1:
            left, right = batch.split(len(batch) // 2 + len(batch) % 2)
            left_error = await self.deliver(left, state, isolate=False)
            if left_error is None:
                batch = right  # the culprit is here; do not send it whole
                continue
            if isinstance(left_error, BadRequestError) and len(left) > 1:
                await self._isolate(left, left_error, state, whole=False)
            # else: left failed for good and is reported (a single refused entry, or an error
            # that is not a 400); either way the right half is unknown.
            await self.deliver(right, state)
            return
        await self.deliver(batch, state)  # the last suspect, alone: the server's own verdict

    async def _envelope_refused(self, batch: Batch, state: SenderState,
                                error: BadRequestError) -> None:
        """Every part tried was refused alike: the envelope is very probably at fault. The two
        entries tried alone are failed (the server refused each); the rest, never tried on its
        own, is left unsent (safe to send again once the cause is fixed), so that bad records
        taken for an envelope fault cost no good record a false "failed"."""
        rest = state.unsettled_of(batch)
        if rest.entries:
            self._ledger.unsent([rest])
            state.settled.update(rest.positions)
        self.envelope_refusals += 1
        logger.warning("a batch was refused whole, for its envelope (%s): %d in a row",
                       error, self.envelope_refusals)
        if self.envelope_refusals >= ENVELOPE_REFUSALS_TO_STOP:
            raise RunRefused(error)


def _refused_for_good(error: PangoCDPError) -> bool:
    """An auth call's answer that no retry will change: credentials refused, or redirected."""
    return isinstance(error, RedirectError) or (
        isinstance(error, AuthenticationError) and error.status in (400, 401, 403))


# What varies between two refusals for the same reason: numbers, and ids (trace ids, uuids).
_VARYING = re.compile(r"[0-9A-Fa-f]{8}(?:-?[0-9A-Fa-f]{4,})*|\d+")


def reason_of(message: str) -> str:
    """A refusal's message with its numbers and ids blanked: two refusals for the same reason
    have the same one."""
    return _VARYING.sub("#", message)


def _alike(error: PangoCDPError, first: BadRequestError) -> bool:
    """Another 400 for the same reason (the same error code, the same message but for numbers
    and ids), naming no entry."""
    return (isinstance(error, BadRequestError) and error.error_code == first.error_code
            and reason_of(error.message or "") == reason_of(first.message or "")
            and _ENTRY_INDEX.search(error.message or "") is None)
