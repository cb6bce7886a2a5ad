"""A quota shared by every process that reaches one Redis: each operation is one Lua script run.

The script (``quota.lua``, next to this file) is a step-by-step port of the SQLite backend's
transaction (``_sqlite._Txn``): Redis runs a script alone, so operations of all processes
apply one after the other, and time is Redis ``TIME``, which every process reads alike.

Keys (``prefix`` defaults to ``pangocdp:quota``; ``{ns}`` is a Redis Cluster hash tag, so one
quota's keys share a slot): ``prefix:{ns}:meta`` (a hash: the pause, the ramp, counters and
each window's totals), ``prefix:{ns}:leases`` (sends in flight, scored by expiry) and per window
``i`` (0, 1, ...) ``prefix:{ns}:w:<i>`` (send times, as keys ``ceil(t / resolution)``) and
``prefix:{ns}:n:<i>`` (sends per key). Every key expires ``keep_for`` after the last operation,
so an abandoned quota goes away.

redis-py is imported when a backend is made (``pip install 'pangocdp-async[redis]'``), so the
package works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.resources
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._backend import QuotaBackendError, QuotaConfig, QuotaConfigError, new_lease_id

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisQuotaBackend"]

_MISMATCH = "PANGOCDP_CONFIG_MISMATCH "
_INF = math.inf


@functools.cache
def _script_source() -> str:
    return importlib.resources.files(__package__).joinpath("quota.lua").read_text("utf-8")


def _num(value: Any) -> float:
    """A number the script formatted (bytes or str: ``inf``, ``-inf`` or ``%.17g``)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return float(text)


def _redact(url: str) -> str:
    """``url`` with any credentials replaced by ``***`` (``user:pass@`` and ``password=``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    head, qmark, query = rest.partition("?")
    if "@" in head:  # everything up to the last "@": a password may hold "/" or "@"
        head = "***@" + head.rpartition("@")[2]
    if query:
        pieces = []
        for piece in query.split("&"):
            name = piece.partition("=")[0]
            pieces.append(f"{name}=***" if name.lower() in ("password", "username") else piece)
        query = "&".join(pieces)
    return f"{scheme}{sep}{head}{qmark}{query}"


def _tag(namespace: str) -> str:
    """The hash tag's text: the namespace itself (a hash of the API key, see
    :func:`namespace_for`), unless it would not make a valid tag (empty, or with braces)."""
    if namespace and "{" not in namespace and "}" not in namespace:
        return namespace
    return "h-" + hashlib.sha256(namespace.encode()).hexdigest()[:24]


class RedisQuotaBackend:
    """One quota shared by every process that reaches the Redis at ``url``.

    >>> scheduler = SharedQuotaScheduler(RedisQuotaBackend("redis://quota-host:6379/0"))
    ... # doctest: +SKIP

    ``timeout``: how long one operation (or a connection attempt) may take before the backend
    counts as unavailable; the shared scheduler then waits and retries (redis-py's own retries
    are off). ``prefix`` starts every key. ``client``: a ``redis.asyncio.Redis`` of the
    caller's own (``url`` and ``timeout`` are then unused, and
    :meth:`~pangocdp_async.RedisQuotaBackend.close` leaves it open).
    ``clock`` (epoch seconds) is for tests only: it replaces Redis ``TIME``.
    """

    name = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "pangocdp:quota",
                 timeout: float = 1.0, clock: Callable[[], float] | None = None,
                 client: redis.asyncio.Redis | None = None) -> None:
        try:
            import redis.asyncio as aioredis
            import redis.exceptions as errors
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise ImportError(
                "RedisQuotaBackend needs redis-py: pip install 'pangocdp-async[redis]'") from exc
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.prefix = prefix
        self.timeout = float(timeout)
        self._clock = clock
        self._shown = (f"client={type(client).__name__}" if client is not None
                       else repr(_redact(url)))
        self._secrets = self._secrets_of(url) if client is None else []
        self._owns_client = client is None
        self._response_error: type[Exception] = errors.ResponseError
        # Unreachable, timed out, or not serving for now (loading, failing over, out of
        # memory): the shared scheduler waits and retries.
        self._transient: tuple[type[BaseException], ...] = (
            errors.ConnectionError, errors.TimeoutError, errors.BusyLoadingError,
            errors.ReadOnlyError, errors.TryAgainError, errors.ClusterDownError,
            errors.OutOfMemoryError, TimeoutError, asyncio.TimeoutError, OSError)

        def make() -> redis.asyncio.Redis:
            return aioredis.Redis.from_url(
                url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0))  # we retry ourselves, with backoff

        self._make_client = make
        self._client: redis.asyncio.Redis | None = client
        if client is None:
            try:
                self._client = make()
            except ValueError as exc:  # a malformed URL: say so without echoing a password
                why = ("it could not be parsed (percent-encode special characters in the "
                       "user name and password)") if self._secrets else self._scrub(str(exc))
                raise ValueError(f"invalid Redis URL {self._shown}: {why}") from None
        self._loop: asyncio.AbstractEventLoop | None = None  # where our client's sockets live
        self._script: AsyncScript | None = None
        self._keys: list[str] | None = None
        self._static: tuple[str, ...] = ()
        self._config: QuotaConfig | None = None
        self._epoch: int | None = None
        self._epoch_seen_at = 0.0  # (the backend's clock)
        #: Tests on an injected clock say how long the server has been up (else Redis INFO).
        self._uptime: Callable[[], float] | None = None

    @staticmethod
    def _secrets_of(url: str) -> list[str]:
        from urllib.parse import parse_qs, unquote, urlsplit

        found: list[str] = []
        try:
            parts = urlsplit(url)
            if parts.password:
                found += [parts.password, unquote(parts.password)]
            found += parse_qs(parts.query).get("password", [])
        except ValueError:
            pass
        head = url.partition("://")[2].partition("?")[0]
        if "@" in head:
            userinfo = head.rpartition("@")[0]
            found += [userinfo, userinfo.partition(":")[2]]
        return sorted({s for s in found if s}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        """``text`` with every credential of the URL replaced by ``***``; all of it withheld
        if a credential too short to replace safely appears in it."""
        for secret in self._secrets:  # longest first
            if len(secret) >= 4:
                text = text.replace(secret, "***")
            elif secret in text:
                return "(details withheld: they may name a credential)"
        return text

    def _names_secret(self, exc: BaseException) -> bool:
        text = str(exc)
        return self._scrub(text) != text

    def _unavailable(self, exc: BaseException) -> QuotaBackendError:
        """The error the shared scheduler waits out (never naming a password)."""
        return QuotaBackendError(
            f"Redis quota backend {self._shown}: {type(exc).__name__}: {self._scrub(str(exc))}")

    def __repr__(self) -> str:
        return f"RedisQuotaBackend({self._shown})"

    def bind(self, namespace: str, config: QuotaConfig) -> None:
        base = f"{self.prefix}:{{{_tag(namespace)}}}"
        keys = [f"{base}:meta", f"{base}:leases"]
        static = [config.signature(), config.policy, "1" if config.count_rejected else "0",
                  repr(float(config.lookback)), str(int(config.ramp_up_to)),
                  repr(float(config.episode)), str(max(1, math.ceil(config.keep_for * 1000))),
                  str(len(config.windows))]
        for i, w in enumerate(config.windows):
            keys += [f"{base}:w:{i}", f"{base}:n:{i}"]
            static += [str(int(w.capacity)), repr(float(w.span)), repr(float(w.resolution))]
        keys.append(f"{base}:done")
        if keys != self._keys:
            self._epoch = None  # the epoch seen was another quota's
        self._keys = keys
        self._static = tuple(static)
        self._config = config

    def redis_keys(self) -> list[str]:
        """The Redis keys of the bound quota (for inspection and tests)."""
        if self._keys is None:
            raise RuntimeError("bind() the backend to a quota first")
        return list(self._keys)

    def _script_now(self) -> AsyncScript:
        """The registered script, on a client whose sockets belong to the running loop."""
        loop = asyncio.get_running_loop()
        if self._owns_client and (self._client is None or (
                self._loop is not None and self._loop is not loop)):
            # First use after close(), or a new event loop (a second asyncio.run): the old
            # client's connections belong to a loop that is gone, so start afresh.
            self._client = self._make_client()
            self._script = None
        self._loop = loop
        if self._script is None:
            assert self._client is not None
            self._script = self._client.register_script(_script_source())
        return self._script

    async def _call(self, op: str, *args: str) -> list[Any]:
        config, keys = self._config, self._keys
        if config is None or keys is None:
            raise RuntimeError("bind() the backend to a quota first")
        script = self._script_now()
        now = "" if self._clock is None else repr(float(self._clock()))
        # (with when it was seen: a record found gone after the keys could expire on their own
        # is no loss, every send it held having left its windows)
        uptime = "" if self._uptime is None else repr(float(self._uptime()))
        epoch = ("" if self._epoch is None
                 else f"{self._epoch}@{self._epoch_seen_at!r}@{uptime}")
        try:
            reply = await script(keys=keys, args=(op, now, epoch, *self._static, *args))
        except self._transient as exc:
            raise self._unavailable(exc) from (None if self._names_secret(exc) else exc)
        except self._response_error as exc:
            message = str(exc)
            if message.startswith("BUSY "):  # another client's script is running long
                raise self._unavailable(exc) from None
            if message.startswith(_MISMATCH):
                stored = message[len(_MISMATCH):]
                raise QuotaConfigError(
                    f"this quota is already paced with other settings ({stored!r}); this "
                    f"process was given {config.describe()} ({config.signature()!r}): every "
                    "process sharing a quota must use the same windows, margin and policy "
                    "(a quota left unused for its longest window takes new settings)"
                ) from None
            raise
        if not isinstance(reply, list) or len(reply) < 2:
            raise QuotaBackendError(f"Redis quota backend {self._shown}: unexpected reply "
                                    f"{type(reply).__name__} to {op}")
        self._epoch = int(_num(reply[0]))
        self._epoch_seen_at = _num(reply[1])
        return reply

    async def reserve(self, lease_ttl: float, lease: int | None = None
                      ) -> tuple[float, int | None, float]:
        reply = await self._call("reserve", repr(float(lease_ttl)),
                                 str(new_lease_id() if lease is None else int(lease)))
        lease = reply[2]
        return (_num(reply[1]), int(_num(lease)) if lease not in (b"", "") else None,
                _num(reply[3]))

    async def complete(self, lease: int, stamp: float, counted: bool, rejected: bool) -> None:
        await self._call("complete", str(int(lease)), repr(float(stamp)),
                         "1" if counted else "0", "1" if rejected else "0")

    async def rate_limited(self, stamp: float | None, pause: float) -> tuple[float, float]:
        reply = await self._call("rate_limited", "" if stamp is None else repr(float(stamp)),
                                 repr(float(pause)))
        return _num(reply[1]), _num(reply[2])

    async def remaining(self, remaining: int, stamp: float | None) -> int:
        reply = await self._call("remaining", str(int(remaining)),
                                 "" if stamp is None else repr(float(stamp)))
        return int(_num(reply[2]))

    async def drain(self) -> None:
        await self._call("drain")

    async def charge(self, counts: list[int]) -> None:
        await self._call("charge", *(str(int(n)) for n in counts))

    async def usage(self) -> tuple[float, list[int], int, float]:
        reply = await self._call("usage")
        return (_num(reply[1]), [int(_num(x)) for x in reply[4:]], int(_num(reply[2])),
                _num(reply[3]))

    async def close(self) -> None:
        """Close the connections this backend opened (a client passed in stays open). The
        quota stays in Redis; the backend can be used again."""
        client, self._client, self._script = self._client, None, None
        if not self._owns_client:
            self._client, self._script = client, None  # the caller's: theirs to close
            return
        loop, self._loop = self._loop, None
        if client is None or (loop is not None and loop is not asyncio.get_running_loop()):
            return  # never used here (nothing open), or its sockets died with their loop
        closer = getattr(client, "aclose", None) or client.close  # aclose(): redis-py >= 5.0.1
        with contextlib.suppress(*self._transient):
            await closer()
