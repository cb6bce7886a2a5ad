"""The stream front: records handed over one at a time by a service, with backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._results import IngestReport
from ._run import END, BulkRun, Encoded

__all__ = ["IngestStream"]


class IngestStream:
    """``async with client.stream(...) as stream: await stream.send(record)``.

    ``send`` validates and encodes the record at once (a bad record raises
    :class:`RequestValidationError` there and is not taken), then waits while ``max_pending``
    records are queued: backpressure, never a drop and never a "queue full" error. A partial
    batch leaves after ``linger`` seconds; ``flush()`` sends everything so far and waits for
    the outcome; leaving the block flushes the rest, and ``report`` then holds the whole run's
    report. A stream is used once.
    """

    def __init__(self, run: BulkRun, max_pending: int,
                 on_report: Callable[[IngestReport], None] | None = None) -> None:
        self._run = run
        self._records: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task[IngestReport] | None = None
        self._on_report = on_report
        self._sent = 0
        self._closed = False
        self.max_pending = max_pending
        self.report = run.report

    @property
    def pending(self) -> int:
        """Records sent to the stream and not yet taken into a batch."""
        return self._records.qsize()

    @property
    def max_batches_queued(self) -> int:
        return self._run.max_queue_depth

    async def __aenter__(self) -> IngestStream:
        if self._task is not None or self._closed:
            raise RuntimeError(
                "this stream was already used; open a new one with client.stream(...)"
            )
        self._task = asyncio.ensure_future(self._run.run_queue(self._records))
        return self

    async def send(self, record: Any) -> None:
        """Hand one record over; waits while ``max_pending`` records are queued."""
        task = self._running()
        accumulator = self._run.accumulator
        position = self._sent
        entry, part = accumulator.encoder.encode_entry(record, position)
        accumulator.check_size(position, part)
        self._sent += 1
        put = asyncio.ensure_future(self._records.put(Encoded(position, entry, part)))
        # Wait for room, unless the run dies meanwhile (then its error is raised here).
        await asyncio.wait([put, task], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._running()

    async def flush(self) -> None:
        """Send every record given so far and wait until each is accepted or reported."""
        task = self._running()
        flush = asyncio.ensure_future(self._run.flush(self._records))
        await asyncio.wait([flush, task], return_when=asyncio.FIRST_COMPLETED)
        if not flush.done():
            flush.cancel()
            self._running()

    def _running(self) -> asyncio.Task[IngestReport]:
        if self._task is None:
            raise RuntimeError("use the stream as 'async with client.stream(...) as stream'")
        if self._closed:
            raise RuntimeError("the stream is closed")
        if self._task.done():
            self._task.result()  # raises the run's error
            raise RuntimeError("the stream is closed")
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
            if not self._task.done():
                await self._records.put(END)
            self.report = await self._task
        finally:
            if self._on_report is not None:
                self._on_report(self._run.report)
