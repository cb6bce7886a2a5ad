"""A FakePangoCDP in its own process: the client's CPU time is measured alone, and several
client processes can share one server."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pangocdp_async.testing import FakePangoCDP


def _serve(conn: Connection, options: dict[str, Any]) -> None:
    async def main() -> None:
        async with FakePangoCDP(**options) as fake:
            conn.send((fake.auth_url, fake.ingest_url))
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    return
                # "summary": what arrived (times on the fake's clock)
                ids: Counter[str] = Counter()
                for entry in fake.accepted:
                    ids[str(entry.get("id"))] += 1
                conn.send({
                    "ids": dict(ids),
                    "outcomes": dict(fake.outcomes),
                    "accepted_at": [r.at for r in fake.requests if r.outcome == "accepted"],
                    "arrived_at": [r.at for r in fake.requests],
                    "wall_minus_clock": time.time() - fake.now(),
                })

    asyncio.run(main())


@dataclass
class RemoteFake:
    auth_url: str
    ingest_url: str
    _conn: Connection

    def summary(self) -> dict[str, Any]:
        self._conn.send("summary")
        result: dict[str, Any] = self._conn.recv()
        return result


@contextmanager
def remote_fake(**options: Any) -> Iterator[RemoteFake]:
    """A FakePangoCDP (``options`` as its constructor's) served by a child process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, options), daemon=True)
    proc.start()
    try:
        auth_url, ingest_url = parent.recv()
        yield RemoteFake(auth_url, ingest_url, parent)
    finally:
        parent.send("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


@contextmanager
def fake_in_subprocess() -> Iterator[tuple[str, str]]:
    """(auth_url, ingest_url) of an unlimited FakePangoCDP that keeps nothing, in a child."""
    with remote_fake(rate_limits=None, keep_entries=False, keep_requests=False) as fake:
        yield fake.auth_url, fake.ingest_url
