"""Records handed from a stream's producers to its run, with backpressure and a clean close.

Every operation on the buffer is synchronous, so there is never a record "being put": a producer
either appended its record (and it will be read, or reported unsent at close) or got an error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["Handover", "StreamClosed"]


class StreamClosed(RuntimeError):
    """The stream's run stopped; nothing more is taken."""


class Handover:
    """A bounded buffer: ``put`` waits while ``limit`` records are buffered (markers do not
    count and never wait); ``close`` ends it and returns what was never taken."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Any] = deque()
        self._records = 0  # buffered records, markers excluded
        self._limit = limit
        self._changed = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return self._records

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()  # waiters hold the old one, which is now set

    async def put(self, record: Any) -> None:
        """Buffer a record, waiting while the buffer is full. Cancelling takes nothing."""
        while True:
            if self.closed:
                raise StreamClosed("the stream is closed")
            if self._records < self._limit:
                self._items.append(record)
                self._records += 1
                self._notify()
                return
            await self._changed.wait()

    def put_marker(self, marker: Any) -> None:
        """Buffer a marker (flush, end, a linger nudge) without waiting."""
        if self.closed:
            raise StreamClosed("the stream is closed")
        self._items.append(marker)
        self._notify()

    async def get(self, is_record: type) -> Any:
        """The next item; ``is_record`` tells records from markers."""
        while not self._items:
            await self._changed.wait()
        item = self._items.popleft()
        if isinstance(item, is_record):
            self._records -= 1
        self._notify()
        return item

    def close(self) -> list[Any]:
        """Take nothing more; return what was buffered and never taken."""
        self.closed = True
        rest = list(self._items)
        self._items.clear()
        self._records = 0
        self._notify()
        return rest
