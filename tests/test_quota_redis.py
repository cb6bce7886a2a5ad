"""The Redis backend beyond what the equivalence walk reaches: its keys (one hash tag, a TTL on
each), a configuration conflict, a lease never completed, a record that vanished, an unreachable
or silent server, and credentials kept out of every message. Time is the injected clock."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from pangocdp_async import Margin, RateLimit
from pangocdp_async._limiter._backend import (
    QuotaBackendError,
    QuotaConfig,
    QuotaConfigError,
    namespace_for,
)

from .conftest import ManualClock
from .quota_servers import free_port, redis_backend_factory, redis_url

pytest.importorskip("redis", reason="the Redis backend needs redis-py")
import redis.asyncio  # (after the skip: the package works without redis-py)
from redis.crc import key_slot

from pangocdp_async import RedisQuotaBackend

LIMITS = (RateLimit(5, 1.0), RateLimit(12, 4.0))
CONFIG = QuotaConfig.build(LIMITS, "sliding", Margin())


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the session's server, to look at the keys."""
    client = redis.asyncio.Redis.from_url(redis_url())
    try:
        yield client
    finally:
        await client.aclose()


async def test_keys_share_one_hash_tag_and_never_hold_the_api_key(
        raw: redis.asyncio.Redis) -> None:
    api_key = "sk-live-do-not-leak-" + uuid.uuid4().hex
    namespace = namespace_for(api_key)
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind(namespace, CONFIG)
        _, lease, _ = await backend.reserve(60.0)
        assert lease is not None
        await backend.complete(lease, clock.now, True, False)
        keys = backend.redis_keys()
        assert len(keys) == 3 + 2 * len(LIMITS)
        assert all(f"{{{namespace}}}" in k for k in keys)
        assert all(api_key not in k for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot
        stored = {k.decode() async for k in raw.scan_iter(match=f"{backend.prefix}:*")}
        assert stored <= set(keys)  # everything written is among the keys passed in KEYS
        assert f"{backend.prefix}:{{{namespace}}}:meta" in stored

        # A namespace that would not make a hash tag (braces) still gives one slot.
        odd = make(clock)
        odd.bind("team{a}b", CONFIG)
        odd_keys = odd.redis_keys()
        assert len({key_slot(k.encode()) for k in odd_keys}) == 1
        assert all("team{a}b" not in k for k in odd_keys)


async def test_every_key_expires_after_keep_for_or_the_last_lease(
        raw: redis.asyncio.Redis) -> None:
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("ttl", CONFIG)
        _, first, _ = await backend.reserve(60.0)
        _, second, _ = await backend.reserve(60.0)  # one lease stays: the leases key exists
        assert first is not None
        assert second is not None
        clock.advance(0.01)
        await backend.complete(first, clock.now - 0.01, True, False)
        # A lease still out keeps the quota until it ends (plus a minute), even past keep_for.
        keep_ms = CONFIG.keep_for * 1000
        held_ms = max(keep_ms, (60.0 - 0.01 + 60.0) * 1000)
        assert held_ms > keep_ms  # (so the check below tells the two apart)
        for key in backend.redis_keys():
            ttl = await raw.pttl(key)
            assert held_ms - 1000 < ttl <= held_ms, (key, ttl)
        await backend.complete(second, clock.now - 0.01, True, False)
        ttls = {key: await raw.pttl(key) for key in backend.redis_keys()}
        assert ttls[backend.redis_keys()[1]] == -2  # (no lease left: the set is gone)
        for key, ttl in ttls.items():
            assert ttl == -2 or keep_ms - 1000 < ttl <= keep_ms + 1, (key, ttl)


async def test_a_different_configuration_is_refused() -> None:
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("conflict", CONFIG)
        await backend.usage()
        other = QuotaConfig.build((RateLimit(5, 1.0), RateLimit(20, 4.0)), "sliding", Margin())
        backend.bind("conflict", other)
        with pytest.raises(QuotaConfigError, match="already paced with") as err:
            await backend.reserve(60.0)
        assert CONFIG.signature() in str(err.value)
        assert other.signature() in str(err.value)
        backend.bind("conflict", CONFIG)  # the agreeing configuration still works
        assert (await backend.usage())[1] == [0, 0]


async def test_a_lease_never_completed_is_counted_at_its_expiry() -> None:
    clock = ManualClock(1_700_000_000.0)
    span = CONFIG.windows[0].span
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("lease", CONFIG)
        start = clock.now
        _, lease, _ = await backend.reserve(2.0)
        assert lease is not None
        clock.advance(1.5)
        _, used, in_flight, _ = await backend.usage()
        assert (used, in_flight) == ([1, 1], 1)
        clock.advance(1.0)  # past the lease's end: its process went quiet
        _, used, in_flight, _ = await backend.usage()
        assert (used, in_flight) == ([1, 1], 0)
        # Filed at the lease's end (start + 2), not at its start: it leaves the first window
        # one span after that.
        clock.now = start + 2.0 + span - 0.01
        assert (await backend.usage())[1][0] == 1
        clock.now = start + 2.0 + span + 0.01
        assert (await backend.usage())[1][0] == 0


async def test_a_record_that_vanished_drains_every_window(raw: redis.asyncio.Redis) -> None:
    """Meta missing while this process knows the quota's epoch, or replaced by a record of
    another epoch that was never drained: every window is modeled full, once."""
    clock = ManualClock(1_700_000_000.0)
    capacities = [w.capacity for w in CONFIG.windows]
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("lost", CONFIG)
        _, lease, _ = await backend.reserve(60.0)
        assert lease is not None
        await backend.complete(lease, clock.now, True, False)

        # 1. The record is gone (flushed, expired): a process that used it assumes the worst.
        await raw.delete(*backend.redis_keys())
        now, used, in_flight, due = await backend.usage()
        assert used == capacities
        assert in_flight == 0
        assert due > now

        # 2. Gone again, and a new process (no epoch known) starts a new record first: it has
        # no reason to drain; the process that knew the old record drains it.
        await raw.delete(*backend.redis_keys())
        newcomer = RedisQuotaBackend(redis_url(), prefix=backend.prefix, clock=clock)
        try:
            newcomer.bind("lost", CONFIG)
            assert (await newcomer.usage())[1] == [0, 0]
            assert (await backend.usage())[1] == capacities
            # Drained once: after the fill is over, nobody fills it again.
            clock.advance(max(w.span for w in CONFIG.windows) + 0.1)
            assert (await newcomer.usage())[1] == [0, 0]
            assert (await backend.usage())[1] == [0, 0]
        finally:
            await newcomer.close()


async def test_a_quota_that_expired_while_idle_is_no_loss(raw: redis.asyncio.Redis) -> None:
    """Keys expire once nobody used the quota for keep_for: every send they held has left its
    windows, so a process coming back after that long starts on empty windows; one that was
    away for less (a record evicted, a restart) still assumes the worst."""
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("idle", CONFIG)
        _, lease, _ = await backend.reserve(60.0)
        assert lease is not None
        await backend.complete(lease, clock.now, True, False)
        clock.advance(CONFIG.keep_for - 20.0)  # (a record gone this early was lost)
        await backend.usage()
        await raw.delete(*backend.redis_keys())
        assert (await backend.usage())[1] == [w.capacity for w in CONFIG.windows]
        clock.advance(CONFIG.keep_for)  # idle past keep_for: the keys expired on their own ...
        await raw.delete(*backend.redis_keys())
        backend._uptime = lambda: CONFIG.keep_for + 1.0  # ... on a server up all that time
        assert (await backend.usage())[1] == [0, 0]
        # The same absence on a server restarted within keep_for: other processes may have
        # sent meanwhile, and the restart lost their sends.
        clock.advance(CONFIG.keep_for)
        await raw.delete(*backend.redis_keys())
        backend._uptime = lambda: 30.0
        assert (await backend.usage())[1] == [w.capacity for w in CONFIG.windows]


async def test_a_second_process_back_after_the_expiry_is_not_drained(
        raw: redis.asyncio.Redis) -> None:
    """Two processes idle past keep_for: the first back starts a new record; the second finds
    an epoch it never saw, which after so long is no loss either."""
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        a = make(clock)
        b = RedisQuotaBackend(redis_url(), prefix=a.prefix, clock=clock)
        try:
            for backend in (a, b):
                backend._uptime = lambda: 10 * CONFIG.keep_for
                backend.bind("two-idle", CONFIG)
                await backend.usage()
            clock.advance(CONFIG.keep_for + 1.0)
            await raw.delete(*a.redis_keys())
            assert (await a.usage())[1] == [0, 0]
            assert (await b.usage())[1] == [0, 0]
        finally:
            await b.close()


async def test_a_retried_reservation_and_completion_take_and_count_once(
        raw: redis.asyncio.Redis) -> None:
    """The same lease name twice (a retry after a lost reply) is one lease; completing it twice
    counts one send."""
    clock = ManualClock(1_700_000_000.0)
    async with redis_backend_factory() as make:
        backend = make(clock)
        backend.bind("retry", CONFIG)
        first = await backend.reserve(60.0, 42)
        again = await backend.reserve(60.0, 42)
        assert first[1] == again[1] == 42
        assert (await backend.usage())[2] == 1
        await backend.complete(42, clock.now, True, False)
        await backend.complete(42, clock.now, True, False)
        _, used, in_flight, _ = await backend.usage()
        assert (used, in_flight) == ([1, 1], 0)
        # A try of lease 42 delayed on the wire past its completion, and one of lease 43 past
        # the release sent when its waiter gave up: neither takes a lease.
        assert (await backend.reserve(60.0, 42))[1] is None
        clock.advance(119.0)  # the id of a completed lease is kept two minutes ...
        assert (await backend.reserve(60.0, 42))[1] is None
        clock.advance(2.0)  # ... then forgotten (no reply is late by that much)
        assert (await backend.reserve(60.0, 42))[1] == 42
        await backend.complete(42, clock.now, False, False)
        await backend.complete(43, float("-inf"), False, False)
        assert (await backend.reserve(60.0, 43))[1] is None
        assert (await backend.usage())[2] == 0
        # A lease granted again after its reply was lost lasts lease_ttl from the new grant.
        assert (await backend.reserve(60.0, 44))[1] == 44
        clock.advance(50.0)
        assert (await backend.reserve(60.0, 44))[1] == 44
        clock.advance(50.0)  # 100 s after the first grant, 50 s after the second
        assert (await backend.usage())[2] == 1


async def test_a_server_not_listening_is_a_backend_error_at_once() -> None:
    port = free_port()
    backend = RedisQuotaBackend(f"redis://quota:pw-not-shown-1@127.0.0.1:{port}/0", timeout=0.2)
    backend.bind("down", CONFIG)
    started = time.monotonic()
    try:
        with pytest.raises(QuotaBackendError) as err:
            await backend.reserve(60.0)
    finally:
        await backend.close()
    assert time.monotonic() - started < 1.0
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message
    assert "pw-not-shown-1" not in message
    assert "ConnectionError" in message


async def test_a_server_that_does_not_answer_times_out() -> None:
    """A socket that accepts connections but never answers: the operation fails after
    ``timeout`` (redis-py's own retries are off)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        backend = RedisQuotaBackend(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        backend.bind("silent", CONFIG)
        started = time.monotonic()
        try:
            with pytest.raises(QuotaBackendError, match="Timeout"):
                await backend.usage()
        finally:
            await backend.close()
        assert time.monotonic() - started < 2.0


async def test_a_refused_password_is_a_backend_error_without_the_password() -> None:
    parts = urlsplit(redis_url())
    user = f"nobody-{uuid.uuid4().hex[:8]}"  # no such user: WRONGPASS, whatever the server
    url = f"redis://{user}:wrong-pw-2@{parts.hostname}:{parts.port}{parts.path}"
    backend = RedisQuotaBackend(url, timeout=1.0)
    backend.bind("auth", CONFIG)
    try:
        with pytest.raises(QuotaBackendError) as err:
            await backend.usage()
    finally:
        await backend.close()
    assert "AuthenticationError" in str(err.value)
    assert "wrong-pw-2" not in str(err.value)
    assert "wrong-pw-2" not in repr(backend)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://user:hunter2@redis.internal:6379/0", "redis://***@redis.internal:6379/0"),
    ("redis://:hunter2@redis.internal:6379/0", "redis://***@redis.internal:6379/0"),
    ("rediss://user:hun%2Fter%402@redis.internal:6380/1", "rediss://***@redis.internal:6380/1"),
    ("unix://:hunter2@/run/redis.sock?db=1", "unix://***@/run/redis.sock?db=1"),
    ("unix:///run/redis.sock?db=1&password=hunter2", "unix:///run/redis.sock?db=1&password=***"),
])
def test_the_repr_hides_the_password(url: str, shown: str) -> None:
    backend = RedisQuotaBackend(url)
    assert repr(backend) == f"RedisQuotaBackend({shown!r})"
    assert "hunter2" not in repr(backend)
    assert "ter%402" not in repr(backend)


def test_a_malformed_url_is_refused_without_echoing_it() -> None:
    """An unescaped "/" in the password: the URL cannot be parsed, and no piece of the
    password may appear in the error (the parser would have named one as the port)."""
    with pytest.raises(ValueError, match="invalid Redis URL") as err:
        RedisQuotaBackend("redis://user:pq7/zx9@2@redis.internal:6379/0")
    assert "pq7" not in str(err.value)
    assert "zx9" not in str(err.value)


async def test_a_client_of_the_callers_own_is_used_and_left_open() -> None:
    client = redis.asyncio.Redis.from_url(redis_url())
    try:
        backend = RedisQuotaBackend(client=client, prefix=f"test-{uuid.uuid4().hex[:8]}",
                                    clock=ManualClock(1_700_000_000.0))
        assert repr(backend) == "RedisQuotaBackend(client=Redis)"
        backend.bind("own-client", CONFIG)
        _, lease, _ = await backend.reserve(60.0)
        assert lease is not None
        await backend.close()
        assert await client.ping()
        assert (await backend.usage())[2] == 1  # still usable after close()
        await client.delete(*backend.redis_keys())
    finally:
        await client.aclose()


async def test_time_is_redis_time_without_a_clock() -> None:
    backend = RedisQuotaBackend(redis_url(), prefix=f"test-{uuid.uuid4().hex[:8]}")
    backend.bind("server-time", CONFIG)
    try:
        before = time.time()
        now, lease, due = await backend.reserve(60.0)
        after = time.time()
        assert lease is not None
        assert due == now
        assert before - 2.0 <= now <= after + 2.0  # the same host's clock
    finally:
        await backend.close()


def test_without_redis_py_the_backend_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "redis" or n.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'pangocdp-async\[redis\]'"):
        RedisQuotaBackend()


@pytest.mark.slow
def test_the_package_imports_without_redis_py() -> None:
    code = ("import sys; sys.modules['redis'] = None; import pangocdp_async; "
            "print(pangocdp_async.RedisQuotaBackend.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: S603
                         check=True, timeout=60)
    assert out.stdout.strip() == "redis"
