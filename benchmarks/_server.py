"""A FakePangoCDP in its own process, so the client's CPU time is measured alone."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

from pangocdp_async.testing import FakePangoCDP


def _serve(conn: Connection) -> None:
    async def main() -> None:
        async with FakePangoCDP(rate_limits=None, keep_entries=False) as fake:
            conn.send((fake.auth_url, fake.ingest_url))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"

    asyncio.run(main())


@contextmanager
def fake_in_subprocess() -> Iterator[tuple[str, str]]:
    """Yield (auth_url, ingest_url) of a FakePangoCDP running in a child process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    try:
        urls: tuple[str, str] = parent.recv()
        yield urls
    finally:
        parent.send("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
