"""PangoCDPClient: wires credentials, the quota scheduler and the transport; owns the session."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr
from yarl import URL

from ._auth import StaticToken, TokenManager, TokenSource
from ._batching import EntryEncoder, check_entries, encode_body, make_envelope
from ._bulk import BulkOptions, BulkRun, DeadLetter, IngestStream, KeyQueue, RunJournal
from ._config import DOCUMENTED_LIMITS, RateLimit
from ._constants import (
    DEFAULT_AUTH_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_INGEST_URL,
    DEFAULT_LINGER_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    ENV_API_KEY,
    ENV_AUTH_URL,
    ENV_GROUP_KEY,
    ENV_INGEST_URL,
    ENV_USERNAME,
    GATEWAY_STATUSES,
    HEADER_API_KEY,
    HEADER_TOKEN,
    MAX_ENTRIES_PER_REQUEST,
)
from ._exceptions import APIConnectionError, AuthenticationError, RateLimitedError
from ._limiter import Limiter, QuotaScheduler, SharedQuotaScheduler, limiter_from_spec
from ._responses import error_for, parse_body, parse_remaining, request_id_of
from ._results import ClientStats, IngestReport, IngestResult
from ._retry import RetryPolicy
from ._stats import StatsRecorder
from ._transport import AiohttpTransport, Transport
from ._validate import check_bool, check_seconds, check_str

__all__ = ["PangoCDPClient"]

logger = logging.getLogger("pangocdp_async")
_MASK = "'**********'"


class SendTracker(Protocol):
    """Hears when a request is handed to the transport and how it ended."""

    def started(self) -> None: ...

    def finished(self, answered: bool) -> None: ...


class PangoCDPClient:
    """Async client for PangoCDP's Data Ingestion API.

    Use it as an async context manager. It opens one :class:`aiohttp.ClientSession` (or borrows
    ``session``, which it then leaves open), authenticates on first use, and paces every request
    through a :class:`QuotaScheduler` so that no documented window is exceeded.

    Credentials and URLs not passed fall back to the environment variables
    ``PANGOCDP_USERNAME``, ``PANGOCDP_API_KEY``, ``PANGOCDP_GROUP_KEY``, ``PANGOCDP_AUTH_URL`` and
    ``PANGOCDP_INGEST_URL``. A static ``token`` (with ``api_key``) skips the auth call.

    ``limiter`` shares one quota: a :class:`QuotaScheduler` between clients of one process, a
    :class:`SharedQuotaScheduler` between processes, or a text the client turns into one it
    owns: ``"sqlite:PATH"`` (the processes of one host), ``"redis://HOST:PORT/DB"`` (any number
    of hosts), ``"local"``; a shared quota is named after a hash of the API key. Otherwise the
    client makes its own local scheduler from ``rate_limits`` (an empty sequence turns pacing
    off). ``retry`` is the default
    :class:`RetryPolicy` of the bulk calls. ``transport`` replaces HTTP altogether (tests,
    benchmarks); ``clock`` is the monotonic clock used for token expiry.

    >>> async with PangoCDPClient(username="me", api_key="...", group_key="...") as client:
    ...     result = await client.ingest("order", [{"orderId": "1"}], source="POS")
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        api_key: str | None = None,
        group_key: str | None = None,
        token: str | None = None,
        auth_url: str | None = None,
        ingest_url: str | None = None,
        rate_limits: Sequence[RateLimit] = DOCUMENTED_LIMITS,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
        limiter: Limiter | str | None = None,
        transport: Transport | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("username", username), ("api_key", api_key),
                            ("group_key", group_key), ("token", token),
                            ("auth_url", auth_url), ("ingest_url", ingest_url)):
            check_str(name, value, optional=True)
        username = username if username is not None else os.environ.get(ENV_USERNAME)
        api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        group_key = group_key if group_key is not None else os.environ.get(ENV_GROUP_KEY)
        if not api_key:
            raise ValueError(f"api_key is required: pass api_key= or set {ENV_API_KEY}")
        if token is None and (not username or not group_key):
            missing = " and ".join(
                name
                for name, value in (("username", username), ("group_key", group_key))
                if not value
            )
            raise ValueError(
                f"{missing} required to authenticate: pass them (or set {ENV_USERNAME} and "
                f"{ENV_GROUP_KEY}), or pass a static token="
            )
        self.username = username
        self._api_key = SecretStr(api_key)
        self._group_key = SecretStr(group_key or "")
        if token is not None and not token.strip():
            raise ValueError("token must not be empty")
        self._static_token = None if token is None else SecretStr(token)
        # (An empty string is an error, never a silent fall-back to the production URL.)
        self.auth_url = _check_url("auth_url", _first_set(auth_url, ENV_AUTH_URL,
                                                          DEFAULT_AUTH_URL))
        self.ingest_url = _check_url("ingest_url", _first_set(ingest_url, ENV_INGEST_URL,
                                                              DEFAULT_INGEST_URL))
        self._ingest_urls = {
            flag: URL(self.ingest_url).update_query(initData="true" if flag else "false")
            for flag in (False, True)
        }
        if limiter is not None and not isinstance(limiter, str) \
                and rate_limits is not DOCUMENTED_LIMITS:
            raise ValueError("pass either a limiter object or rate_limits=, not both")
        if limiter is not None and not isinstance(limiter, (str, Limiter)):
            raise TypeError(f"limiter must be a QuotaScheduler, a SharedQuotaScheduler or a "
                            f"quota spec such as 'sqlite:PATH', got {type(limiter).__name__}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(f"session must be an aiohttp.ClientSession, got "
                            f"{type(session).__name__}")
        if transport is not None and not callable(getattr(transport, "post", None)):
            raise TypeError(f"transport must have an async post(), got {type(transport).__name__}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if isinstance(timeout, aiohttp.ClientTimeout):
            self._timeout = timeout
        else:
            # (nan would mean no timeout at all, inf an OverflowError at request time)
            self._timeout = aiohttp.ClientTimeout(
                total=check_seconds("timeout", timeout, allow_zero=False))
        if isinstance(limiter, str):
            limiter = limiter_from_spec(limiter, rate_limits)
            self._owns_limiter = True
        else:
            self._owns_limiter = limiter is None
        self.limiter: Limiter = limiter if limiter is not None else QuotaScheduler(rate_limits)
        if isinstance(self.limiter, SharedQuotaScheduler):
            total = self._timeout.total
            if total is None or total >= self.limiter.lease_ttl:
                raise ValueError(
                    f"the shared quota's lease_ttl ({self.limiter.lease_ttl:g} s) must be longer "
                    "than the request timeout ("
                    + ("none is set" if total is None else f"{total:g} s")
                    + "): a send still unanswered when its lease ends is counted as answered "
                    "then")
        self.limiter.bind_credential(api_key)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        #: The default retry policy of ``ingest_many`` and ``stream``; its ``time_budget_s``
        #: also bounds how long ``ingest`` waits for a quota slot.
        self.retry = retry if retry is not None else RetryPolicy()
        self._session = session
        self._owns_session = session is None and transport is None
        self._transport = transport
        self._injected_transport = transport
        self._earlier_auth_calls = 0
        self._open = False
        self._clock = clock
        self._tokens: TokenSource | None = None
        self._stats = StatsRecorder(clock)
        self._stats.limiter = self.limiter
        self._headers: dict[str, str] = {}
        #: The report of the latest ``ingest_many`` run, also when it was cancelled.
        self.last_report: IngestReport | None = None

    def __repr__(self) -> str:
        return (
            f"PangoCDPClient(ingest_url={self.ingest_url!r}, auth_url={self.auth_url!r}, "
            f"username={self.username!r}, api_key={_MASK}, "
            f"group_key={_MASK if self._group_key.get_secret_value() else None}, "
            f"token={_MASK if self._static_token else None}, limiter={self.limiter!r})"
        )

    # --- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> PangoCDPClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the session (if the client owns one). ``async with`` calls this for you."""
        if self._session is not None and self._session.closed and not self._owns_session:
            raise RuntimeError(
                "the aiohttp session given to this client is closed; pass an open one"
            )
        self._open = True
        if self._transport is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            self._transport = AiohttpTransport(self._session, self._timeout)
        if self._tokens is None and self._static_token is not None:
            self._tokens = StaticToken(self._static_token)
        elif self._tokens is None:
            assert self.username is not None  # (no token: __init__ required the username)
            self._tokens = TokenManager(
                transport=self._transport,
                auth_url=self.auth_url,
                username=self.username,
                api_key=self._api_key,
                group_key=self._group_key,
                clock=self._clock,
            )

    async def aclose(self) -> None:
        """Close what the client owns: its session, and its scheduler (which saves state).

        The client can be opened again (``async with`` a second time): it then makes a new
        session (if it owns one) and authenticates again on first use.
        """
        if self._owns_limiter:
            await self.limiter.close()
        elif isinstance(self.limiter, SharedQuotaScheduler):
            # Completions still on their way to a shared backend: without them, the slots stay
            # held by this process's leases until the leases end.
            await self.limiter.flush(timeout=2.0)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._owns_session or self._session is None or self._session.closed:
            self._transport = None if self._injected_transport is None else self._transport
        self._earlier_auth_calls = self.auth_calls
        self._tokens = None  # bound to the old transport; the next open() makes a new one
        self._open = False

    @property
    def is_closed(self) -> bool:
        """Whether the client is closed (never opened, or closed by ``aclose``)."""
        return not self._open

    @property
    def stats(self) -> ClientStats:
        """Requests by status class, 429s, retries, in flight, queue depth, records/s and
        latency percentiles (over the latest requests)."""
        return self._stats.snapshot()

    @property
    def auth_calls(self) -> int:
        """How many times this client called the auth API."""
        current = self._tokens.auth_calls if isinstance(self._tokens, TokenManager) else 0
        return self._earlier_auth_calls + current

    # --- one request ---------------------------------------------------------------------------
    async def ingest(
        self,
        object_type: str,
        entries: Iterable[Any],
        *,
        source: str,
        init_data: bool = False,
        je_config_id: str | None = None,
        je_event_key: str | None = None,
        ignored_update_cfs: list[str] | None = None,
    ) -> IngestResult:
        """Send 1 to 50 entries of one object type in one request.

        Raises :class:`RequestValidationError` (before any I/O) for bad input, and an
        :class:`APIStatusError` subclass or :class:`APIConnectionError` when the request fails.
        A 401 triggers one token refresh and one retry. A 429 is raised (and pauses every
        sender of the scheduler); if the scheduler's next slot is known to be the client's
        ``retry.time_budget_s`` away or more, :class:`QuotaWaitError` is raised at once, with
        nothing sent, instead of waiting.

        >>> await client.ingest("order", [{"orderId": "A1"}], source="POS")  # doctest: +SKIP
        """
        check_bool("init_data", init_data)
        envelope = make_envelope(
            object_type,
            source,
            je_config_id=je_config_id,
            je_event_key=je_event_key,
            ignored_update_cfs=ignored_update_cfs,
        ).wire_fields()
        items = check_entries(entries)
        body = encode_body(envelope, items)
        return await self._send_encoded(body, entries=len(items), init_data=init_data,
                                       max_wait=self.retry.time_budget_s)

    async def ingest_many(
        self,
        object_type: str,
        records: Iterable[Any] | AsyncIterable[Any],
        *,
        source: str,
        init_data: bool = False,
        je_config_id: str | None = None,
        je_event_key: str | None = None,
        ignored_update_cfs: list[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = MAX_ENTRIES_PER_REQUEST,
        max_batch_bytes: int | None = None,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetter | None = None,
        on_progress: Callable[[IngestReport], Any] | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> IngestReport:
        """Send any number of records (an iterable or async iterable, never materialized) in
        batches of up to ``batch_size`` entries and ``max_batch_bytes`` bytes, from
        ``concurrency`` senders, retrying by ``retry``. Returns a report with a result for every
        record; failed records also go to ``dead_letter`` (a JSON Lines path or a callable).

        On cancellation, reading stops, requests under way get ``shutdown_timeout`` seconds to
        finish, ``client.last_report`` lists the records not sent, and CancelledError
        propagates. If the record source raises, :class:`RecordSourceError` carries the report.

        >>> report = await client.ingest_many("order", rows(), source="POS")  # doctest: +SKIP
        """
        options = BulkOptions(
            retry=retry if retry is not None else self.retry, init_data=init_data,
            concurrency=concurrency, batch_size=batch_size, max_batch_bytes=max_batch_bytes,
            dead_letter=dead_letter, on_progress=on_progress, shutdown_timeout=shutdown_timeout,
        )
        run = self._bulk_run(object_type, source, je_config_id, je_event_key,
                             ignored_update_cfs, options)
        try:
            return await run.run(records)
        finally:
            self.last_report = run.report

    def stream(
        self,
        object_type: str,
        *,
        source: str,
        init_data: bool = False,
        je_config_id: str | None = None,
        je_event_key: str | None = None,
        ignored_update_cfs: list[str] | None = None,
        linger: float = DEFAULT_LINGER_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = MAX_ENTRIES_PER_REQUEST,
        max_batch_bytes: int | None = None,
        max_pending: int | None = None,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetter | None = None,
        on_progress: Callable[[IngestReport], Any] | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> IngestStream:
        """A stream for services that produce records one at a time.

        >>> async with client.stream("order", source="POS") as stream:  # doctest: +SKIP
        ...     await stream.send({"orderId": "A-1"})
        >>> stream.report.records_accepted                                # doctest: +SKIP
        """
        options = BulkOptions(
            retry=retry if retry is not None else self.retry, init_data=init_data,
            concurrency=concurrency, batch_size=batch_size, max_batch_bytes=max_batch_bytes,
            dead_letter=dead_letter, on_progress=on_progress, shutdown_timeout=shutdown_timeout,
            linger=linger, max_pending=max_pending,
        )
        run = self._bulk_run(object_type, source, je_config_id, je_event_key,
                             ignored_update_cfs, options)
        return IngestStream(run, options.pending_limit, on_report=self._set_last_report)

    def _set_last_report(self, report: IngestReport) -> None:
        self.last_report = report

    def _bulk_run(self, object_type: str, source: str, je_config_id: str | None,
                  je_event_key: str | None, ignored_update_cfs: list[str] | None,
                  options: BulkOptions, *, journal: RunJournal | None = None,
                  keys: KeyQueue | None = None) -> BulkRun:
        """A bulk run; ``journal`` and ``keys`` are the checkpointing hooks of the
        ``pangocdp`` command (see :class:`RunJournal` and :class:`Accumulator`)."""
        if self._transport is None or self._tokens is None:  # (an injected transport stays)
            raise RuntimeError("the client is not open: use 'async with PangoCDPClient(...)'")
        envelope = make_envelope(
            object_type, source, je_config_id=je_config_id, je_event_key=je_event_key,
            ignored_update_cfs=ignored_update_cfs,
        ).wire_fields()
        return BulkRun(self._send_encoded, EntryEncoder(envelope), options, stats=self._stats,
                       journal=journal, keys=keys)

    async def _send_encoded(
        self,
        body: bytes,
        *,
        entries: int,
        init_data: bool,
        max_wait: float | None = None,
        tracker: SendTracker | None = None,
    ) -> IngestResult:
        """Send one already encoded body: reserve a slot, POST, interpret the answer.

        Every attempt takes its own reservation, just before it is sent. ``max_wait`` bounds the
        wait for a slot (:class:`QuotaWaitError` beyond it, with nothing sent). ``tracker``
        hears when a POST starts and whether it ended with an answer (so a bulk run shutting
        down can tell "in flight" and "in doubt" from "not sent").
        """
        if self._transport is None or self._tokens is None:
            raise RuntimeError("the client is not open: use 'async with PangoCDPClient(...)'")
        transport = self._transport
        tokens = self._tokens
        stats = self._stats
        limiter = self.limiter
        url = self._ingest_urls[init_data]
        api_key = self._api_key.get_secret_value()
        attempts = 0
        refreshed = False
        while True:
            token = await tokens.get()
            headers = self._headers
            if headers.get(HEADER_TOKEN) != token:  # built once per token, not per request
                headers = self._headers = {
                    "Content-Type": "application/json",
                    HEADER_TOKEN: token,
                    HEADER_API_KEY: api_key,
                }
            # The send starts in the step in which the slot is given: nothing is awaited between.
            reservation = await limiter.reserve(max_wait=max_wait)
            attempts += 1
            stats.started()
            started = self._clock()
            if tracker is not None:
                try:
                    tracker.started()
                except BaseException:  # (the bulk run's journal could not write: not sent)
                    limiter.complete(reservation, counted=False)
                    stats.failed()
                    raise
            try:
                response = await transport.post(url, body=body, headers=headers)
            except APIConnectionError as exc:
                limiter.complete(reservation, counted=exc.maybe_sent)
                stats.failed()
                if tracker is not None:
                    tracker.finished(answered=not exc.maybe_sent)
                raise
            except BaseException:
                limiter.complete(reservation)
                stats.failed()
                if tracker is not None:
                    tracker.finished(answered=False)
                raise
            limiter.complete(reservation, rejected=response.status == 429)
            if tracker is not None:
                # A gateway's 502 or 504 does not say whether the server behind it stored it.
                tracker.finished(answered=response.status not in GATEWAY_STATUSES)
            latency = self._clock() - started
            parsed = parse_body(response.body)
            error = error_for(response, parsed)
            # (a 200 whose body says it failed is counted by its status, but not as accepted)
            stats.answered(response.status, latency, entries if error is None else 0)
            if error is None:
                remaining = parse_remaining(response)
                if remaining is not None:
                    limiter.on_remaining(remaining, reservation)
                logger.debug("ingest: %d entries, HTTP %d in %.3f s", entries, response.status,
                             latency)
                return IngestResult(
                    status=response.status,
                    body=parsed,
                    request_id=request_id_of(parsed),
                    attempts=attempts,
                    latency_s=latency,
                    entries=entries,
                    rate_limit_remaining=remaining,
                )
            if isinstance(error, RateLimitedError):
                limiter.on_rate_limited(error.retry_after, reservation)
            elif isinstance(error, AuthenticationError) and tokens.can_refresh and not refreshed:
                logger.info("ingest: token refused (HTTP 401); refreshing once")
                refreshed = True
                await tokens.refresh(token)
                continue
            logger.debug("ingest: HTTP %d after %.3f s: %s", response.status, latency, error)
            raise error


def _first_set(argument: str | None, env: str, default: str) -> str:
    """The argument if given, else the environment variable if set, else the default."""
    if argument is not None:
        return argument
    from_env = os.environ.get(env)
    return from_env if from_env is not None else default


def _check_url(name: str, value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError(f"{name} is not a valid URL: {value!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return value
