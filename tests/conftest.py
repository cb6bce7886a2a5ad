"""Shared fixtures: a FakePangoCDP on an ephemeral loopback port and clients bound to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import PangoCDPClient, SQLiteQuotaStore
from pangocdp_async.testing import FakePangoCDP


class ManualClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An injectable sleep that moves this clock instead of waiting."""
        self.now += max(0.0, seconds)
        self.slept += max(0.0, seconds)
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` (something a real server or socket must bring about) every 10 ms,
    up to ``timeout`` seconds; fail naming ``what`` if it never holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake() -> AsyncIterator[FakePangoCDP]:
    """A fake with rate limiting off, so tests of other behaviour are not paced."""
    async with FakePangoCDP(rate_limits=None) as server:
        yield server


ClientFactory = Callable[..., PangoCDPClient]


@pytest.fixture
def make_client(fake: FakePangoCDP) -> ClientFactory:
    def factory(**kwargs: Any) -> PangoCDPClient:
        options: dict[str, Any] = {**fake.client_kwargs(), "rate_limits": ()}
        options.update(kwargs)
        return PangoCDPClient(**options)

    return factory


class ThreadedFake:
    """A FakePangoCDP served by its own event loop in a thread, for tests that run the
    ``pangocdp`` command in this thread (the command runs ``asyncio.run`` itself)."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakePangoCDP(**kwargs)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(timeout=10)

    def env(self, **overrides: str) -> dict[str, str]:
        """The PANGOCDP_* variables that point the command at this fake."""
        fake = self.fake
        env = {"PANGOCDP_USERNAME": fake.username, "PANGOCDP_API_KEY": fake.api_key,
               "PANGOCDP_GROUP_KEY": fake.group_key, "PANGOCDP_AUTH_URL": fake.auth_url,
               "PANGOCDP_INGEST_URL": fake.ingest_url}
        env.update(overrides)
        return env

    def call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the fake's loop (to read its state between requests)."""
        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def threaded_fake() -> Iterator[Callable[..., ThreadedFake]]:
    made: list[ThreadedFake] = []

    def factory(**kwargs: Any) -> ThreadedFake:
        server = ThreadedFake(**kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


_OPEN_STORES: list[SQLiteQuotaStore] = []


def open_store(path: Path, **kwargs: Any) -> SQLiteQuotaStore:
    """A SQLiteQuotaStore closed when the test ends (a restart test opens several on one file;
    an unclosed SQLite connection is a ResourceWarning, an error here, since Python 3.13)."""
    store = SQLiteQuotaStore(path, **kwargs)
    _OPEN_STORES.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPEN_STORES:
        _OPEN_STORES.pop().close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the Redis server the shared-quota tests may have started for this session."""
    from .quota_servers import stop_session_server

    stop_session_server()
