"""An asyncio event loop whose clock only moves when every task is waiting.

``loop.time()``, ``asyncio.sleep`` and timers all follow the virtual clock, so a simulation of
26 hours runs as fast as its callbacks. When the loop would block, the selector polls real I/O
without waiting and moves the clock to the next timer instead. Meant for code without real
network I/O: a socket that needs real time to answer would see time rush past it.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_in_virtual_time"]

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if timeout is None and not ready:
            # No timer at all: only real I/O (a thread, a signal) can wake us.
            return self._real.select(None)
        # Like a real clock, every turn of the loop moves time on, if only by the smallest
        # step a float allows: code that re-arms a timer for "now plus a rounding error" would
        # otherwise spin at one instant forever.
        self._loop.advance(0.0 if ready or timeout is None else timeout)
        return ready

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time, starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the loop does this itself whenever it would wait)."""
        if seconds < 0:
            raise ValueError("virtual time only moves forward")
        now = self._virtual_now
        # A wait shorter than the clock's float resolution must still move it, or code that
        # re-arms a timer for "a tiny bit later" would spin forever at the same instant.
        self._virtual_now = max(now + seconds, math.nextafter(now, math.inf))


def run_in_virtual_time(coro: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop` and return its result."""
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
