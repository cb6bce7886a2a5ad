"""The stream front: records handed over one at a time by a service, with backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._results import IngestReport
from ._handover import Handover, StreamClosed
from ._run import END, BulkRun, Encoded

__all__ = ["IngestStream"]


class IngestStream:
    """``async with client.stream(...) as stream: await stream.send(record)``.

    ``send`` validates and encodes the record at once (a bad record raises
    :class:`RequestValidationError` there and is not taken), then waits while ``max_pending``
    records are buffered: backpressure, never a drop and never a "queue full" error. Once
    ``send`` returns, the record is the run's: it ends accepted, failed, unsent or in doubt in
    the report. A partial batch leaves after ``linger`` seconds; ``flush()`` sends everything so
    far and waits for the outcome; leaving the block flushes the rest, and ``report`` then holds
    the whole run's report. A stream is used once.
    """

    def __init__(self, run: BulkRun, max_pending: int,
                 on_report: Callable[[IngestReport], None] | None = None) -> None:
        self._run = run
        self._handover = Handover(max_pending)
        self._task: asyncio.Task[IngestReport] | None = None
        self._on_report = on_report
        self._taken = 0
        self._closed = False
        self.max_pending = max_pending
        self.report = run.report

    @property
    def pending(self) -> int:
        """Records sent to the stream and not yet taken into a batch."""
        return len(self._handover)

    @property
    def max_batches_queued(self) -> int:
        """The most full batches seen waiting for a sender at once (at most twice
        ``concurrency``: then the reading of the stream waits)."""
        return self._run.max_queue_depth

    async def __aenter__(self) -> IngestStream:
        if self._task is not None or self._closed:
            raise RuntimeError(
                "this stream was already used; open a new one with client.stream(...)"
            )
        self._task = asyncio.ensure_future(self._run.run_stream(self._handover))
        return self

    async def send(self, record: Any) -> None:
        """Hand one record over; waits while ``max_pending`` records are buffered."""
        self._running()
        accumulator = self._run.accumulator
        entry, part = accumulator.encoder.encode_entry(record, self._taken)
        accumulator.check_size(self._taken, part)
        try:
            await self._handover.put(Encoded(entry, part))
        except StreamClosed:
            self._running()  # the run's error, if it died
            raise
        self._taken += 1

    async def flush(self) -> None:
        """Send every record given so far and wait until each is accepted or reported."""
        task = self._running()
        flush = asyncio.ensure_future(self._run.flush(self._handover))
        await asyncio.wait([flush, task], return_when=asyncio.FIRST_COMPLETED)
        if flush.done():
            flush.result()  # (a StreamClosed if the run stopped meanwhile)
            return
        flush.cancel()
        self._running()

    def _running(self) -> asyncio.Task[IngestReport]:
        if self._task is None:
            raise RuntimeError("use the stream as 'async with client.stream(...) as stream'")
        if self._task.done():
            self._task.result()  # raises the run's error
            raise StreamClosed("the stream is closed")
        if self._closed:
            raise StreamClosed("the stream is closed")
        return self._task

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        assert self._task is not None
        self._closed = True
        try:
            if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                return
            if not self._task.done() and not self._handover.closed:
                self._handover.put_marker(END)
            self.report = await self._task
        finally:
            if self._on_report is not None:
                self._on_report(self._run.report)
