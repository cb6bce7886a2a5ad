"""Where the shared-quota tests find a Redis server.

``PANGOCDP_TEST_REDIS_URL`` names one (``.ci/run`` starts one on a loopback port and sets it);
otherwise a ``redis-server`` on the PATH is started for the test session on an ephemeral
loopback port; otherwise the Redis tests skip, saying why. With ``PANGOCDP_TEST_REQUIRE_REDIS=1``
(CI) a missing server fails them instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ENV_URL = "PANGOCDP_TEST_REDIS_URL"
ENV_REQUIRE = "PANGOCDP_TEST_REQUIRE_REDIS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process of the test's own on 127.0.0.1 (no persistence), which a test may
    stop, freeze and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pangocdp-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 -- our own arguments
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def _missing(why: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{why}, and {ENV_REQUIRE}=1 says a Redis server is required")
    pytest.skip(f"{why}: set {ENV_URL}=redis://127.0.0.1:PORT/0 or install redis-server")


_session_server: RedisServer | None = None


def redis_url() -> str:
    """The URL of a Redis server for this test session (skips or fails if there is none)."""
    global _session_server
    url = os.environ.get(ENV_URL)
    if url:
        return url
    if _session_server is None:
        binary = redis_binary()
        if binary is None:
            _missing("no Redis server for the shared-quota tests")
        assert binary is not None
        server = RedisServer(binary)
        server.start()
        _session_server = server
    return _session_server.url


def stop_session_server() -> None:
    global _session_server
    if _session_server is not None:
        _session_server.close()
        _session_server = None


@contextlib.contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own (to stop and restart); skips or fails without the binary."""
    binary = redis_binary()
    if binary is None:
        _missing("no redis-server binary to start (and stop) for this test")
    assert binary is not None
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def redis_backend_factory() -> AsyncIterator[Callable[[Callable[[], float]], Any]]:
    """Factory of RedisQuotaBackends on the session's server, each with a key prefix of its
    own (so tests never see each other's quotas), driven by the given clock."""
    url = redis_url()
    from pangocdp_async import RedisQuotaBackend

    made: list[Any] = []

    def make(clock: Callable[[], float]) -> Any:
        backend = RedisQuotaBackend(url, prefix=f"test-{uuid.uuid4().hex[:8]}", clock=clock)
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.close()
