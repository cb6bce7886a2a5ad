"""One bulk run: wires the reader, the accumulator, the senders and the ledger; owns shutdown
and the report.

Two ways in. A plain iterable cut by count only is read by the senders themselves, a batch at a
time, with nothing in between (the fast path). An async iterable, a byte limit or a stream goes
through a reader task that encodes each record once and a queue of at most ``2 x concurrency``
batches. Either way memory stays flat whatever the input size.

Every exit path (the end, cancellation, the source raising, a sender crashing) goes through
:meth:`BulkRun._shutdown`, once, which leaves every record read in exactly one place of the
report.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, cast

from .._batching import Batch, EntryEncoder
from .._exceptions import PipelineError, RecordSourceError, RequestValidationError
from .._results import IngestReport
from .._stats import StatsRecorder
from ._accumulator import Accumulator, KeyQueue, SourceFailed
from ._handover import Handover, StreamClosed
from ._ledger import Ledger, RunJournal, SenderState
from ._options import BulkOptions
from ._sender import BatchSender, RunRefused, SendBody, Stopped
from ._sink import DeadLetterSink

__all__ = ["END", "BulkRun", "Encoded", "Flush"]

logger = logging.getLogger("pangocdp_async")

Source = Iterable[Any] | AsyncIterable[Any] | Handover


class _End:
    pass


class _Wake:
    pass


END = _End()  # the stream's last item
_WAKE = _Wake()  # the linger timer's nudge to a reader waiting for records


class Encoded:
    """A record a stream already validated and encoded in ``send``."""

    __slots__ = ("entry", "part")

    def __init__(self, entry: dict[str, Any], part: bytes) -> None:
        self.entry = entry
        self.part = part


class Flush:
    """Marker: send everything read so far; ``done`` gets the number of batches emitted."""

    __slots__ = ("done",)

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done


class BulkRun:
    """Built by ``PangoCDPClient.ingest_many`` and ``PangoCDPClient.stream``, a new one for each
    run (a stream refuses a second ``async with``)."""

    def __init__(self, send: SendBody, encoder: EntryEncoder, options: BulkOptions, *,
                 stats: StatsRecorder, journal: RunJournal | None = None,
                 keys: KeyQueue | None = None) -> None:
        self.options = options
        self.encoder = encoder
        self.accumulator = Accumulator(encoder, options.batch_size, options.max_batch_bytes,
                                       keys)
        self._journal = journal
        self.report = IngestReport()
        self._stats = stats
        self._send = send
        self._sink: DeadLetterSink | None = None
        self._ledger: Ledger | None = None
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2 * options.concurrency)
        self._states: dict[asyncio.Task[None], SenderState] = {}
        self._emitting: Batch | None = None
        self._handover: Handover | None = None
        self._emitted = 0
        self._unsettled: set[int] = set()  # emitted batches not yet settled (for flush)
        self._progress = asyncio.Condition()
        self._stopping = False
        self._shutting_down: asyncio.Future[None] | None = None
        #: Largest number of batches seen waiting in the queue (for tests of backpressure).
        self.max_queue_depth = 0

    # --- the run -----------------------------------------------------------------------------
    async def run(self, records: Iterable[Any] | AsyncIterable[Any]) -> IngestReport:
        """Send every record; return the report (also on ``self.report`` whatever happens)."""
        if isinstance(records, asyncio.Queue):
            raise TypeError(
                "records must be an iterable or async iterable; an asyncio.Queue has no end. "
                "Use client.stream() to send records one at a time"
            )
        if isinstance(records, (str, bytes, dict)) or not isinstance(
            records, (Iterable, AsyncIterable)
        ):
            raise TypeError(f"records must be an iterable or async iterable of mappings, "
                            f"got {type(records).__name__}")
        return await self._run(records)

    async def run_stream(self, handover: Handover) -> IngestReport:
        """The stream's way in: records (and markers) from ``handover`` until :data:`END`."""
        self._handover = handover
        return await self._run(handover)

    async def _run(self, source: Source) -> IngestReport:
        options = self.options
        self._sink = DeadLetterSink(options.dead_letter)  # a bad path fails here, before I/O
        self._ledger = Ledger(self.report, self._sink, self._journal)
        sender = BatchSender(self._send, encoder=self.encoder, init_data=options.init_data,
                             retry=options.retry, ledger=self._ledger, stats=self._stats,
                             stopping=lambda: self._stopping)
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._stats.queue_depth.add(self._batches_waiting)
        reader: asyncio.Task[None] | None = None
        if (isinstance(source, Iterable) and options.max_batch_bytes is None
                and options.linger is None):
            # A plain iterable cut by count only: each sender reads and encodes its own next
            # batch (synchronously, so senders never interleave), with no queue in between.
            iterator = iter(source)
            loops = [self._read_and_send(iterator, sender) for _ in range(options.concurrency)]
        else:
            reader = asyncio.create_task(self._read(source))
            loops = [self._send_loop(sender) for _ in range(options.concurrency)]
        senders = [asyncio.create_task(loop_) for loop_ in loops]
        try:
            await self._supervise(reader, senders)
            if self._handover is not None:
                # Records handed over after the stream's end marker (a producer racing the
                # block's exit) are not read: they are reported unsent, and later sends fail.
                self._unsent_leftovers(self._handover.close())
        except asyncio.CancelledError:
            self.report.cancelled = True
            await self._shutdown_once(reader, senders)
            raise
        finally:
            self.report.elapsed_s = loop.time() - started
            self._stats.queue_depth.discard(self._batches_waiting)
            if self.report.cancelled:
                logger.warning("ingest cancelled: %s", self.report.summary())
            self._sink.close()
        if self.report.stopped_by is not None:
            logger.warning("ingest stopped early: every batch is refused (%s): %s",
                           self.report.stopped_by, self.report.summary())
        logger.info("ingest finished: %s", self.report.summary())
        return self.report

    def _batches_waiting(self) -> int:
        """Full batches waiting for a sender (``client.stats.queue_depth``): none once the run
        stops (what was queued is then unsent, and the queue holds the senders' stop marks)."""
        return 0 if self._stopping else self._queue.qsize()

    async def _supervise(self, reader: asyncio.Task[None] | None,
                         senders: list[asyncio.Task[None]]) -> None:
        """Wait for every task; on the first that fails (or ends cancelled without this run
        being cancelled), shut down and raise the matching error."""
        pending: set[asyncio.Task[None]] = set(senders)
        if reader is not None:
            pending.add(reader)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if self.report.stopped_by is not None:  # the server refuses every batch alike
                await self._shutdown_once(reader, senders)
                return
            for finished in done:
                if finished.cancelled():  # (not by us: we are not being cancelled)
                    exc: BaseException = asyncio.CancelledError(
                        "a task of the run was cancelled from outside (was the client closed?)")
                else:
                    found = finished.exception()
                    if found is None:
                        continue
                    exc = found
                await self._shutdown_once(reader, senders)
                raise self._error_for(exc, is_reader=finished is reader) from (
                    exc.__cause__ if isinstance(exc, SourceFailed) else exc)

    def _error_for(self, exc: BaseException, *, is_reader: bool) -> PipelineError:
        report = self.report
        if is_reader or isinstance(exc, SourceFailed):
            cause = exc.__cause__ if isinstance(exc, SourceFailed) else exc
            return RecordSourceError(
                f"the record source raised {type(cause).__name__} after "
                f"{report.records_read:,} records; {report.records_unsent:,} read but not sent",
                report,
            )
        return PipelineError(
            f"a sender crashed ({type(exc).__name__}: {exc}); {report.records_unsent:,} "
            f"records not sent, {report.records_in_doubt:,} in doubt",
            report,
        )

    async def _shutdown_once(self, reader: asyncio.Task[None] | None,
                             senders: list[asyncio.Task[None]]) -> None:
        """Run the shutdown once and wait for it to finish, even through repeated
        cancellation (it is bounded by the shutdown timeout): the report is whole when this
        returns, and a second Ctrl-C cannot hand back a half-built one."""
        if self._shutting_down is None:
            self._shutting_down = asyncio.ensure_future(self._shutdown(reader, senders))
        cancelled = False
        while not self._shutting_down.done():
            try:
                await asyncio.shield(self._shutting_down)
            except asyncio.CancelledError:
                cancelled = True
        self._shutting_down.result()
        if cancelled:
            raise asyncio.CancelledError

    async def _shutdown(self, reader: asyncio.Task[None] | None,
                        senders: list[asyncio.Task[None]]) -> None:
        """Stop reading; let requests under way finish within the timeout; put every record
        not yet settled in ``unsent`` or ``in_doubt``."""
        assert self._ledger is not None
        ledger = self._ledger
        self._stopping = True
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        queued = [b for b in (self._emitting, self.accumulator.drain()) if b is not None]
        self._emitting = None
        if self._handover is not None:  # a stream: records handed over, not yet read
            self._unsent_leftovers(self._handover.close())
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if batch is not None:
                queued.append(batch)
        ledger.unsent(queued)
        for _ in senders:
            self._queue.put_nowait(None)
        async with self._progress:
            self._progress.notify_all()  # nobody waits in flush() for a run that stopped
        # Senders with no request under way (waiting for a quota slot, a 429 pause or a
        # backoff) stop at once; one with a request in flight, or splitting a refused batch,
        # gets the timeout to hear its answers (and starts no new request meanwhile).
        states = self._states
        running = [t for t in senders if not t.done()]
        idle = [t for t in running if not states[t].in_flight and not states[t].isolating]
        for task in idle:
            task.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        busy = [t for t in running if t not in idle]
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.options.shutdown_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for task in senders:  # cancelled, crashed or stopped with a batch under way
            if task.done() and not task.cancelled():
                task.exception()  # (retrieved: a crash is reported once, by _supervise)
            state = states.get(task)
            if state is not None and state.batch.entries:
                ledger.stopped(state)

    def _unsent_leftovers(self, items: list[Any]) -> None:
        """Records a stream handed over that the run never read: unsent, in order."""
        assert self._ledger is not None
        leftover = Batch()
        for item in items:
            if isinstance(item, Encoded):
                leftover.add(self.accumulator.take_encoded(), item.entry, item.part)
            elif isinstance(item, Flush) and not item.done.done():
                item.done.set_result(self._emitted)
        self.report.records_read = self.accumulator.read
        self._ledger.unsent([leftover])

    # --- reading -------------------------------------------------------------------------------
    async def _read_and_send(self, records: Iterator[Any], sender: BatchSender) -> None:
        state = self._state()
        accumulator = self.accumulator
        report = self.report
        assert self._ledger is not None
        ledger = self._ledger
        while not self._stopping:
            # Everything read is in the report (or the state) before the first await.
            try:
                batch, refused = accumulator.take(records)
            except SourceFailed as failed:
                report.records_read = accumulator.read
                ledger.unsent([failed.partial])
                await ledger.failed_each(failed.refused)
                raise
            report.records_read = accumulator.read
            if batch:
                state.begin(batch)
            await ledger.failed_each(refused)
            if batch is None:
                return
            if batch:
                await self._deliver(sender, batch, state)

    async def _read(self, source: Source) -> None:
        await self._read_each(source)
        for _ in range(self.options.concurrency):
            await self._queue.put(None)

    async def _items(self, source: Source) -> AsyncIterator[Any]:
        if isinstance(source, Handover):
            while True:
                item = await source.get(Encoded)
                if item is END:
                    return
                yield item
        elif isinstance(source, AsyncIterable):
            async for item in source:
                yield item
        else:
            for item in source:
                yield item

    async def _read_each(self, source: Source) -> None:
        loop = asyncio.get_running_loop()
        accumulator = self.accumulator
        report = self.report
        assert self._ledger is not None
        ledger = self._ledger
        linger = self.options.linger
        deadline: float | None = None  # when the partial batch must leave
        timer: asyncio.TimerHandle | None = None
        # A stream is woken for its linger by a marker. The timer is cancelled below before
        # the run can close the handover, so the marker never meets a closed one.
        nudge = source.put_marker if isinstance(source, Handover) else None
        try:
            async for item in self._items(source):
                if item is _WAKE:
                    if deadline is not None and loop.time() >= deadline:
                        await self._emit(accumulator.drain())
                        deadline = None
                    elif deadline is not None and nudge is not None:
                        # asyncio fires a timer up to the clock's resolution early (15.6 ms
                        # on Windows): wake again at the deadline.
                        if timer is not None:
                            timer.cancel()
                        timer = loop.call_at(deadline, nudge, _WAKE)
                    continue
                if isinstance(item, Flush):
                    await self._emit(accumulator.drain())
                    deadline = None
                    item.done.set_result(self._emitted)
                    continue
                if isinstance(item, Encoded):
                    position, entry, part = accumulator.take_encoded(), item.entry, item.part
                else:
                    try:
                        position, entry, part = accumulator.encode(item)
                    except RequestValidationError as exc:
                        report.records_read = accumulator.read
                        # An error about one record names its position (its key, if keyed).
                        await ledger.failed([cast(int, exc.index)], [item], exc)
                        continue
                report.records_read = accumulator.read
                for batch in accumulator.add(position, entry, part):
                    await self._emit(batch)
                    deadline = None
                if linger is not None and accumulator.partial.entries and deadline is None:
                    deadline = loop.time() + linger
                    if timer is not None:
                        timer.cancel()
                    if nudge is not None:
                        timer = loop.call_at(deadline, nudge, _WAKE)
                if deadline is not None and loop.time() >= deadline:
                    await self._emit(accumulator.drain())
                    deadline = None
            await self._emit(accumulator.drain())
        finally:
            if timer is not None:
                timer.cancel()

    async def _emit(self, batch: Batch | None) -> None:
        if batch is None:
            return
        # Until the queue takes it the batch is held here: a reader cancelled while waiting
        # for room (Queue.put is cancellation-safe) leaves it where shutdown will find it.
        self._emitting = batch
        batch.seq = self._emitted
        await self._queue.put(batch)
        self._emitting = None
        self._unsettled.add(batch.seq)
        self._emitted += 1
        self.max_queue_depth = max(self.max_queue_depth, self._queue.qsize())
        if self._queue.qsize() < self._queue.maxsize:
            # A plain iterable (cut by bytes) never yields on its own: let senders start.
            await asyncio.sleep(0)

    async def flush(self, handover: Handover) -> None:
        """Send everything read so far and wait until it is settled (the stream's flush)."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        handover.put_marker(Flush(done))
        target = await done  # batches 0 .. target-1 hold everything sent before the flush
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._stopping or min(self._unsettled, default=target) >= target)
        if self._stopping:
            raise StreamClosed("the stream stopped before everything was settled")

    # --- sending -------------------------------------------------------------------------------
    def _state(self) -> SenderState:
        task = asyncio.current_task()
        assert task is not None
        state = self._states[task] = SenderState(self._journal, len(self._states))
        return state

    async def _send_loop(self, sender: BatchSender) -> None:
        state = self._state()
        queue = self._queue
        while not self._stopping:
            batch = await queue.get()
            if batch is None:
                return
            state.begin(batch)
            await self._deliver(sender, batch, state)

    async def _deliver(self, sender: BatchSender, batch: Batch, state: SenderState) -> None:
        try:
            await sender.deliver(batch, state)
        except Stopped:
            return  # the run is stopping: shutdown puts what is left of the batch in place
        except RunRefused as refused:
            self.report.stopped_by = refused.error
            self._stopping = True
            # The records of the batch not yet settled (the rest of a batch being split) are
            # not tried further: in doubt if a request for them may have arrived, else unsent,
            # reported now (before the batches still queued, as they were read).
            assert self._ledger is not None
            if not state.uncertain:
                self._finished(batch)  # (a batch with records in doubt stays under way)
            self._ledger.stopped(state)
            return
        self._finished(batch)
        state.end()
        self._unsettled.discard(batch.seq)
        async with self._progress:
            self._progress.notify_all()
        callback = self.options.on_progress
        if callback is not None:
            result = callback(self.report)
            if inspect.isawaitable(result):
                await result


    def _finished(self, batch: Batch) -> None:
        if self._journal is not None and batch.entries:
            self._journal.finished(batch)

