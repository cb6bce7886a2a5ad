"""The bulk pipeline: records -> encoded batches -> a pool of senders -> a report.

Two ways in. A plain iterable cut by count is read by the senders themselves, a batch at a
time, with nothing in between (the fast path). An async iterable, a byte limit or a stream goes
through a reader task that encodes each record once and a queue of at most ``2 x concurrency``
batches. Either way memory stays flat whatever the input size. Each sender delivers one batch at
a time through the client (which reserves a quota slot per attempt) and applies the retry
policy. Every record read ends accepted, failed (with its error) or unsent (the run stopped),
and the report says which.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ._batching import Batch, EntryEncoder
from ._constants import MAX_ENTRIES_PER_REQUEST
from ._exceptions import (
    APIConnectionError,
    BadRequestError,
    PangoCDPError,
    QuotaWaitError,
    RateLimitedError,
    RequestValidationError,
)
from ._results import IngestReport, RecordFailure, UnsentRecord
from ._retry import Decision, RetryPolicy, backoff_delay, decide

if TYPE_CHECKING:
    from ._client import PangoCDPClient

__all__ = ["DeadLetter", "IngestStream", "Pipeline", "PipelineError", "RecordSourceError"]

logger = logging.getLogger("pangocdp_async")

#: Where failed records go: a path (JSON Lines, appended) or a callable taking each failure.
DeadLetter = str | Path | Callable[[RecordFailure], Any]

# A server message that names the refused entry, such as "entries[7]: Missing momCode".
_ENTRY_INDEX = re.compile(r"entries\s*\[\s*(\d+)\s*\]")


class PipelineError(PangoCDPError):
    """A sender crashed (a bug, or a dead-letter callable that raised). ``report`` says what
    was accepted, failed and left unsent."""

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


class RecordSourceError(PipelineError):
    """The record source raised; reading stopped. The original error is ``__cause__``."""


class _SourceFailed(Exception):
    """Raised by a sender whose read of a plain iterable failed; the cause is the error."""


_EMPTY = Batch()


class _End:
    pass


class _Timeout:
    pass


_END = _End()
_TIMEOUT = _Timeout()


class _Encoded:
    """A record the stream already validated and encoded in ``send``."""

    __slots__ = ("entry", "part")

    def __init__(self, entry: dict[str, Any], part: bytes) -> None:
        self.entry = entry
        self.part = part


class _Flush:
    __slots__ = ("done",)

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done


Item = object  # a record, or one of the markers _END, _TIMEOUT, a _Flush


class _Source:
    """Uniform access to the three kinds of input: sync iterables, async iterables, a queue."""

    def __init__(self, records: Iterable[Any] | AsyncIterable[Any] | asyncio.Queue[Any]) -> None:
        self._queue: asyncio.Queue[Any] | None = None
        self.sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(records, asyncio.Queue):
            self._queue = records
        elif isinstance(records, AsyncIterable):
            self._async = aiter(records)
        elif isinstance(records, Iterable) and not isinstance(records, (str, bytes, dict)):
            self.sync = iter(records)
        else:
            raise TypeError(
                f"records must be an iterable or async iterable of mappings, "
                f"got {type(records).__name__}"
            )

    async def next(self) -> Item:
        if self.sync is not None:
            return next(self.sync, _END)
        if self._async is not None:
            try:
                return await anext(self._async)
            except StopAsyncIteration:
                return _END
        assert self._queue is not None
        # A plain get, never wrapped in a timeout: Queue.get is cancellation-safe (an item is
        # never taken by a get that is then cancelled), and wait_for around it is not on
        # Python < 3.12. The linger timer wakes the reader through wake() instead.
        item: Item = await self._queue.get()
        return item

    def wake(self) -> None:
        """Tell a reader waiting on the queue that its linger time is up."""
        if self._queue is not None and not self._queue.full():
            self._queue.put_nowait(_TIMEOUT)


class Pipeline:
    """One bulk run. Built by ``PangoCDPClient.ingest_many`` and ``PangoCDPClient.stream``."""

    def __init__(
        self,
        client: PangoCDPClient,
        encoder: EntryEncoder,
        *,
        init_data: bool,
        concurrency: int,
        batch_size: int,
        max_batch_bytes: int | None,
        retry: RetryPolicy,
        dead_letter: DeadLetter | None,
        on_progress: Callable[[IngestReport], Any] | None,
        linger: float | None,
        shutdown_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_ENTRIES_PER_REQUEST:
            raise ValueError(
                f"batch_size must be 1 to {MAX_ENTRIES_PER_REQUEST}, got {batch_size!r}"
            )
        if max_batch_bytes is not None and max_batch_bytes <= encoder.overhead:
            raise ValueError(
                f"max_batch_bytes must exceed the envelope's {encoder.overhead} bytes"
            )
        if linger is not None and linger <= 0:
            raise ValueError("linger must be > 0 seconds")
        self._client = client
        self.encoder = encoder
        self._init_data = init_data
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._max_bytes = max_batch_bytes
        self._retry = retry
        self._dead_letter = dead_letter
        self._dead_file: IO[bytes] | None = None
        self._on_progress = on_progress
        self._linger = linger
        self._shutdown_timeout = shutdown_timeout
        self._rng = rng if rng is not None else random.Random()
        self.report = IngestReport()
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * concurrency)
        self._partial = Batch()
        self._current: dict[asyncio.Task[None], Batch] = {}
        # Positions of the batches under way already reported accepted or failed (a batch
        # being split settles part by part): what shutdown must not report unsent.
        self._settled: set[int] = set()
        self._sending: set[asyncio.Task[Any]] = set()  # senders with a request under way
        self._isolating: set[asyncio.Task[Any]] = set()  # senders splitting a refused batch
        self._emitted = 0
        self._delivered = 0
        self._progress = asyncio.Condition()
        self._stopping = False
        #: Largest number of batches seen waiting in the queue (for tests of backpressure).
        self.max_queue_depth = 0

    # --- the run -------------------------------------------------------------------------------
    async def run(self, records: Iterable[Any] | AsyncIterable[Any] | asyncio.Queue[Any]
                  ) -> IngestReport:
        source = _Source(records)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stats = self._client._stats
        depth = self._queue.qsize
        stats.queue_depth.add(depth)
        reader: asyncio.Future[None] | None
        if source.sync is not None and self._max_bytes is None and self._linger is None:
            # A plain iterable cut by count only: each sender reads and encodes its own next
            # batch (synchronously, so senders never interleave), with no queue in between.
            reader = None
            loops = [self._read_and_send(source.sync) for _ in range(self._concurrency)]
        else:
            reader = asyncio.ensure_future(self._read(source))
            loops = [self._send_loop() for _ in range(self._concurrency)]
        senders = [asyncio.create_task(loop_) for loop_ in loops]
        for task in senders:
            self._current[task] = _EMPTY
        try:
            pending: set[asyncio.Future[None]] = set(senders)
            if reader is not None:
                pending.add(reader)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for finished in done:
                    exc = finished.exception()
                    if exc is None:
                        continue
                    await self._shutdown(reader, senders)
                    self._finish(loop.time() - started)
                    if finished is reader or isinstance(exc, _SourceFailed):
                        cause = exc.__cause__ if isinstance(exc, _SourceFailed) else exc
                        raise RecordSourceError(
                            f"the record source raised {type(cause).__name__} after "
                            f"{self.report.records_read:,} records; "
                            f"{self.report.records_unsent:,} read but not sent",
                            self.report,
                        ) from cause
                    raise PipelineError(
                        f"a sender crashed ({type(exc).__name__}: {exc}); "
                        f"{self.report.records_unsent:,} records not sent",
                        self.report,
                    ) from exc
        except asyncio.CancelledError:
            self.report.cancelled = True
            await self._shutdown(reader, senders)
            self._finish(loop.time() - started)
            logger.warning("ingest cancelled: %s", self.report.summary())
            raise
        finally:
            stats.queue_depth.discard(depth)
            self._client.last_report = self.report
            self._close_dead_letter()
        self._finish(loop.time() - started)
        logger.info("ingest finished: %s", self.report.summary())
        return self.report

    def _finish(self, elapsed: float) -> None:
        self.report.elapsed_s = elapsed

    async def _shutdown(self, reader: asyncio.Future[None] | None,
                        senders: list[asyncio.Task[None]]) -> None:
        """Stop reading; let batches being sent finish within the timeout; the rest is unsent."""
        self._stopping = True
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self._mark_unsent(self._partial)
        self._partial = Batch()
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if batch is not None:
                self._mark_unsent(batch)
        for _ in senders:
            self._queue.put_nowait(None)
        # Senders with no request under way (waiting for a quota slot, a 429 pause or a
        # backoff) stop at once; those with one get the shutdown timeout to hear its answer.
        # (A sender isolating a refused entry may have delivered part of its batch already:
        # it gets the timeout too, and only the parts not yet settled are reported unsent.)
        running = [t for t in senders if not t.done()]
        idle = [t for t in running if t not in self._sending and t not in self._isolating]
        for task in idle:
            task.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        for task in idle:
            self._mark_unsent(self._current.get(task, _EMPTY))
        running = [t for t in running if t not in idle]
        if running:
            _, late = await asyncio.wait(running, timeout=self._shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            for task in late:
                self._mark_unsent(self._current.get(task, _EMPTY))

    def _mark_unsent(self, batch: Batch) -> None:
        settled = self._settled
        for pos, entry in zip(batch.positions, batch.entries, strict=True):
            if pos not in settled:
                self.report.unsent.append(UnsentRecord(pos, entry))

    # --- reading -------------------------------------------------------------------------------
    async def _read(self, source: _Source) -> None:
        await self._read_each(source)
        for _ in range(self._concurrency):
            await self._queue.put(None)

    def _take_batch(self, records: Iterator[Any]) -> Batch | None:
        """Read and encode the next batch of a plain iterable (None at its end)."""
        encoder = self.encoder
        report = self.report
        first = report.records_read
        chunk: list[Any] = []
        try:
            # list.extend keeps what it took before the iterator raised: nothing read is lost.
            chunk.extend(itertools.islice(records, self._batch_size))
        except Exception as exc:
            self._partial, refused = encoder.encode_batch(chunk, first)
            report.records_read = first + len(chunk)
            for pos, record, error in refused:
                self._fail([pos], [record], error)
            raise _SourceFailed() from exc
        if not chunk:
            return None
        batch, refused = encoder.encode_batch(chunk, first)
        report.records_read = first + len(chunk)
        for pos, record, error in refused:
            self._fail([pos], [record], error)
        return batch

    async def _read_and_send(self, records: Iterator[Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            batch = self._take_batch(records)
            if batch is None:
                return
            if batch:
                self._current[task] = batch
                await self._deliver(batch)
                self._current[task] = _EMPTY
                await self._delivered_one()

    async def _read_each(self, source: _Source) -> None:
        loop = asyncio.get_running_loop()
        encoder = self.encoder
        report = self.report
        deadline: float | None = None  # when the partial batch must leave (linger)
        timer: asyncio.TimerHandle | None = None
        position = 0
        try:
            while True:
                item = await source.next()
                if item is _END:
                    break
                if item is _TIMEOUT:
                    if deadline is not None and loop.time() >= deadline:
                        await self._emit()
                        deadline = None
                    continue
                if isinstance(item, _Flush):
                    await self._emit()
                    deadline = None
                    item.done.set_result(self._emitted)
                    continue
                pos = position
                position += 1
                report.records_read = position
                if isinstance(item, _Encoded):
                    entry, part = item.entry, item.part
                else:
                    try:
                        entry, part = encoder.encode_entry(item, pos)
                    except RequestValidationError as exc:
                        self._fail([pos], [item], exc)
                        continue
                if self._max_bytes is not None:
                    if encoder.overhead + len(part) > self._max_bytes:
                        self._fail([pos], [item], RequestValidationError(
                            f"entries[{pos}]: the entry alone is {len(part):,} bytes encoded, "
                            f"more than max_batch_bytes={self._max_bytes:,} allows", index=pos))
                        continue
                    if (self._partial.entries
                            and encoder.overhead + self._partial.size + 1 + len(part)
                            > self._max_bytes):
                        await self._emit()
                        deadline = None
                self._partial.add(pos, entry, part)
                if self._linger is not None and len(self._partial) == 1:
                    deadline = loop.time() + self._linger
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_at(deadline, source.wake)
                if len(self._partial) >= self._batch_size or (
                    deadline is not None and loop.time() >= deadline
                ):
                    await self._emit()
                    deadline = None
            await self._emit()
        finally:
            if timer is not None:
                timer.cancel()

    async def _emit(self) -> None:
        if not self._partial.entries:
            return
        # The batch stays in _partial until the queue takes it: a reader cancelled while
        # waiting for room must leave it where shutdown will find it.
        await self._queue.put(self._partial)
        self._partial = Batch()
        self._emitted += 1
        self.max_queue_depth = max(self.max_queue_depth, self._queue.qsize())
        if self._queue.qsize() < self._queue.maxsize:
            # A sync iterable (cut by bytes) never yields on its own: let senders start.
            await asyncio.sleep(0)

    async def flush_marker(self, queue: asyncio.Queue[Any]) -> None:
        """Send everything read so far and wait until it is delivered (used by the stream)."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await queue.put(_Flush(done))
        target = await done
        async with self._progress:
            await self._progress.wait_for(lambda: self._delivered >= target or self._stopping)

    # --- sending -------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            self._current[task] = batch
            await self._deliver(batch)
            self._current[task] = _EMPTY
            await self._delivered_one()

    async def _delivered_one(self) -> None:
        self._delivered += 1
        if self._linger is not None:  # a stream: someone may be waiting in flush()
            async with self._progress:
                self._progress.notify_all()
        if self._on_progress is not None:
            self._on_progress(self.report)

    async def _deliver(self, batch: Batch, *, isolate: bool = True) -> PangoCDPError | None:
        """Send one batch until it is accepted or each of its records is reported failed.

        Returns ``None`` if accepted, else the final error. With ``isolate=False`` a 400 for
        several entries is returned unreported, for the caller to isolate.
        """
        client = self._client
        report = self.report
        policy = self._retry
        loop = asyncio.get_running_loop()
        first_try = loop.time()
        attempts = 0
        rate_limited = 0
        maybe_sent = False
        body = self.encoder.batch_body(batch)
        while True:
            attempts += 1
            # A retry waits for a quota slot within what is left of the batch's budget; the
            # first attempt waits as long as pacing needs.
            max_wait = (None if attempts == 1
                        else max(0.0, policy.time_budget_s - (loop.time() - first_try)))
            try:
                result = await client.send_encoded(body, entries=len(batch),
                                                   init_data=self._init_data, max_wait=max_wait,
                                                   sending=self._sending)
            except QuotaWaitError as exc:  # nothing was sent
                self._fail(batch.positions, batch.entries, exc)
                return exc
            except PangoCDPError as exc:
                report.requests += 1
                if isinstance(exc, APIConnectionError) and exc.maybe_sent:
                    maybe_sent = True
                if isinstance(exc, RateLimitedError):
                    rate_limited += 1
                    report.rate_limited += 1
                decision = decide(exc, attempts=attempts, rate_limited=rate_limited,
                                  elapsed_s=loop.time() - first_try, entries=len(batch),
                                  policy=policy)
                if decision is Decision.SPLIT and isinstance(exc, BadRequestError):
                    if isolate:
                        task = asyncio.current_task()
                        assert task is not None
                        outermost = task not in self._isolating
                        self._isolating.add(task)
                        try:
                            await self._isolate(batch, exc)
                        finally:
                            if outermost:
                                self._isolating.discard(task)
                    return exc
                if decision is Decision.FAIL:
                    self._fail(batch.positions, batch.entries, exc)
                    return exc
                report.retries += 1
                client._stats.retries += 1
                if decision is Decision.RETRY:
                    await asyncio.sleep(backoff_delay(attempts, policy, self._rng))
                continue  # AFTER_PAUSE: the scheduler holds the next reservation back
            report.requests += result.attempts
            report.records_accepted += len(batch)
            if self._isolating:  # only parts of a split batch can be settled piecemeal
                self._settled.update(batch.positions)
            if maybe_sent:
                report.possible_duplicates += len(batch)
            return None

    async def _isolate(self, batch: Batch, error: BadRequestError) -> None:
        """``batch`` was refused with 400: find the refused entries, deliver the rest.

        When the server's message names the entry (``entries[i]``), that entry is sent alone
        (so it is reported with the server's own verdict) and the rest together: 2 requests.
        Otherwise the batch is searched by halves: the left half is sent; if it is accepted, the
        refused entry must be in the right half, which is searched without being sent whole;
        if it is refused too, it is searched and the right half is delivered on its own. The
        last suspect is always sent alone. One refused entry among 50 costs 6 to 12 extra
        requests, 9.4 on average over its 50 possible places.
        """
        match = _ENTRY_INDEX.search(error.message or "")
        if match is not None and int(match.group(1)) < len(batch):
            index = int(match.group(1))
            await self._deliver(batch.select([index]))
            await self._deliver(batch.without(index))
            return
        while len(batch) > 1:
            left, right = batch.split(len(batch) // 2 + len(batch) % 2)
            left_error = await self._deliver(left, isolate=False)
            if left_error is None:
                batch = right  # the culprit is here; do not send it whole
                continue
            if isinstance(left_error, BadRequestError) and len(left) > 1:
                await self._isolate(left, left_error)
            # else: left failed for good and is reported (a single refused entry, or an error
            # that is not a 400); either way the right half is unknown.
            await self._deliver(right)
            return
        await self._deliver(batch)  # the last suspect, alone: the server's own verdict

    # --- failures ------------------------------------------------------------------------------
    def _fail(self, positions: list[int], records: list[Any], error: PangoCDPError) -> None:
        report = self.report
        if self._isolating:
            self._settled.update(positions)
        report.records_failed += len(positions)
        for pos, record in zip(positions, records, strict=True):
            failure = RecordFailure(pos, record, error)
            report.failures.append(failure)
            self._write_dead_letter(failure)
        logger.warning("%d record(s) failed (first at position %d): %s",
                       len(positions), positions[0], error)

    def _write_dead_letter(self, failure: RecordFailure) -> None:
        target = self._dead_letter
        if target is None:
            return
        if callable(target):
            target(failure)
            return
        if self._dead_file is None:
            self._dead_file = Path(target).open("ab")  # noqa: SIM115 -- closed at the run's end
        self._dead_file.write(orjson.dumps(failure.to_json(), default=repr,
                                           option=orjson.OPT_APPEND_NEWLINE))
        self._dead_file.flush()

    def _close_dead_letter(self) -> None:
        if self._dead_file is not None:
            self._dead_file.close()
            self._dead_file = None



class IngestStream:
    """``async with client.stream(...) as stream: await stream.send(record)``.

    ``send`` validates and encodes the record at once (a bad record raises
    :class:`RequestValidationError` there), then waits while ``max_pending`` records are queued:
    backpressure, never a drop and never a "queue full" error. A partial batch leaves after
    ``linger`` seconds; ``flush()`` sends everything so far and waits for the outcome; leaving the
    block flushes the rest, and ``report`` then holds the whole run's report.
    """

    def __init__(self, pipeline: Pipeline, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._pipeline = pipeline
        self._encoder = pipeline.encoder
        self._records: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task[IngestReport] | None = None
        self._sent = 0
        self.max_pending = max_pending
        self.report = pipeline.report

    @property
    def pending(self) -> int:
        """Records sent to the stream and not yet taken into a batch."""
        return self._records.qsize()

    @property
    def max_batches_queued(self) -> int:
        return self._pipeline.max_queue_depth

    async def __aenter__(self) -> IngestStream:
        self._task = asyncio.create_task(self._pipeline.run(self._records))
        return self

    async def send(self, record: Any) -> None:
        task = self._running()
        entry, part = self._encoder.encode_entry(record, self._sent)
        self._sent += 1
        put = asyncio.ensure_future(self._records.put(_Encoded(entry, part)))
        # Wait for room, unless the run dies meanwhile (then its error is raised here).
        await asyncio.wait([put, task], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._running()

    async def flush(self) -> None:
        """Send every record given so far and wait until each is accepted or reported."""
        task = self._running()
        flush = asyncio.ensure_future(self._pipeline.flush_marker(self._records))
        await asyncio.wait([flush, task], return_when=asyncio.FIRST_COMPLETED)
        if not flush.done():
            flush.cancel()
            self._running()

    def _running(self) -> asyncio.Task[IngestReport]:
        if self._task is None:
            raise RuntimeError("use the stream as 'async with client.stream(...) as stream'")
        if self._task.done():
            self._task.result()  # raises the run's error
            raise RuntimeError("the stream is closed")
        return self._task

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        assert self._task is not None
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            return
        if not self._task.done():
            await self._records.put(_END)
        self.report = await self._task
