"""QuotaScheduler with a store: when state is saved, what a save holds, and what operators are
told when loading or saving fails."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from pangocdp_async.testing import run_in_virtual_time
from tests.conftest import ManualClock

TEN = [RateLimit(10, 1.0)]
NO_MARGIN = Margin(0.0, 0.0)
EPOCH = 1_700_000_000.0


class MemoryStore:
    """A store in memory: ``saved`` lists every state written, oldest first."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.saved: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return "MemoryStore('test')"

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.saved.append(state)


class FailingStore(MemoryStore):
    def save(self, state: dict[str, Any]) -> None:
        raise OSError("disk full")


def sched(store: Any, **kwargs: Any) -> QuotaScheduler:
    kwargs.setdefault("margin", NO_MARGIN)
    return QuotaScheduler(TEN, store=store, wall_clock=ManualClock(EPOCH), **kwargs)


def manual(store: Any, **kwargs: Any) -> QuotaScheduler:
    """A scheduler on an injected clock (usable without an event loop)."""
    clock = ManualClock()
    return sched(store, clock=clock, sleep=clock.sleep, **kwargs)


async def one_send(s: QuotaScheduler) -> None:
    async with s.slot():
        pass


def test_without_a_loop_every_save_every_sends_are_saved_in_place() -> None:
    """try_reserve() outside an event loop writes the state at once, every save_every
    starts, taken as the send starts (it is in flight)."""
    store = MemoryStore()
    s = manual(store, save_every=3)
    saves = []
    for _ in range(9):
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
        saves.append(len(store.saved))
    assert saves == [0, 0, 1, 1, 1, 2, 2, 2, 3]  # at the 3rd, 6th and 9th start
    assert [state["in_flight"] for state in store.saved] == [1, 1, 1]
    assert [state["unsaved_limit"] for state in store.saved] == [6, 6, 6]


def test_background_saves_go_on_after_the_first() -> None:
    """With save_every=1, each start is saved in the background, the second as the first."""
    async def main() -> list[int]:
        store = MemoryStore()
        s = sched(store, save_every=1)
        await one_send(s)
        await s.save()  # after the background save under way
        await one_send(s)
        await s.save()
        return [state["in_flight"] for state in store.saved]
    assert run_in_virtual_time(main()) == [1, 0, 1, 0]


def test_an_explicit_save_restarts_the_count_to_the_next_one() -> None:
    """save() counts as a save: the next background one comes save_every sends after it."""
    async def main() -> int:
        store = MemoryStore()
        s = sched(store, save_every=3)
        await one_send(s)
        await s.save()
        await one_send(s)
        await one_send(s)  # 2 sends since the save: no background save yet
        await s.save()
        return len(store.saved)
    assert run_in_virtual_time(main()) == 2


def test_a_save_while_running_charges_lost_sends_and_close_does_not() -> None:
    """A save during the run (a crash may follow) makes a restore charge up to 2 x
    save_every unsaved sends; the save on close, with nothing in flight, charges none."""
    async def main() -> list[int]:
        store = MemoryStore()
        s = sched(store, save_every=4)
        await one_send(s)
        await s.save()
        await s.close()
        return [state["unsaved_limit"] for state in store.saved]
    assert run_in_virtual_time(main()) == [8, 0]


class HeldExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, holding each call (a store's save) until ``run_one()``:
    the test decides when a background write happens."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.held: list[tuple[concurrent.futures.Future[Any], Callable[..., Any],
                              tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.held.append((future, functools.partial(fn, **kwargs), args))
        return future

    def run_one(self) -> None:
        future, fn, args = self.held.pop(0)
        future.set_result(fn(*args))


def test_save_waits_for_a_background_save_so_the_newest_lands_last() -> None:
    """save() while a background save is under way starts its write only after that one is
    done, so the newest state is the one left in the store."""
    async def main() -> list[int]:
        executor = HeldExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        store = MemoryStore()
        s = sched(store, save_every=1)
        await one_send(s)  # a background save starts, taken with the send in flight
        task = asyncio.ensure_future(s.save())
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(executor.held) == 1  # the new save waits for the one under way
        while not task.done():
            if executor.held:
                executor.run_one()
            await asyncio.sleep(0)
        return [state["in_flight"] for state in store.saved]
    assert run_in_virtual_time(main()) == [1, 0]


def test_no_saved_state_is_reported_with_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    s = manual(MemoryStore(None))
    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        assert s.try_reserve() is not None
    [record] = [r for r in caplog.records if r.name == "pangocdp_async"]
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert message.startswith("no saved quota state:")
    assert "API key" in message
    assert message.endswith("(call drain() if something may have)")


def test_a_restored_state_is_reported_with_its_age(caplog: pytest.LogCaptureFixture) -> None:
    saved = manual(None).export_state()
    s = manual(MemoryStore({**saved, "saved_at": EPOCH - 5.0, "unsaved_limit": 0}))
    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        assert s.try_reserve() is not None
    messages = [r.getMessage() for r in caplog.records if r.name == "pangocdp_async"]
    assert messages == ["restored quota state saved 5 s ago"]


def test_an_unreadable_state_is_reported_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning names the store, the error's type and its message."""
    store = MemoryStore({"version": 99})
    s = manual(store)
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        assert s.try_reserve() is None  # every window modeled full
    [record] = [r for r in caplog.records if r.name == "pangocdp_async"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "MemoryStore('test')" in message
    assert "(ValueError: not a quota state: unsupported version 99)" in message


def test_a_failed_save_is_reported_and_running_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        s = sched(FailingStore())
        await one_send(s)
        with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
            await s.save()
        await one_send(s)
    run_in_virtual_time(main())
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == "pangocdp_async"
    assert record.getMessage() == "could not save the quota state to MemoryStore('test'): disk full"
