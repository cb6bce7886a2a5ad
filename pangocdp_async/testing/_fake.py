"""FakePangoCDP: a real aiohttp.web server that behaves like PangoCDP, on 127.0.0.1.

For our tests, users' tests and demos. It keeps every accepted entry so a test can prove that
nothing was lost or duplicated, limits requests like a Bucket4j servlet filter, and injects
latency, 5xx answers and dropped connections on demand.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict

import orjson
from aiohttp import web
from pydantic import ValidationError

from .._config import DOCUMENTED_LIMITS, RateLimit, validate_rate_limits
from .._constants import (
    HEADER_API_KEY,
    HEADER_RATE_LIMIT_REMAINING,
    HEADER_RETRY_AFTER,
    HEADER_TOKEN,
)
from .._models import AuthRequest, IngestRequestBody
from .._validate import check_bool, check_int, check_seconds, check_str
from ._bucket4j import Bucket4jBucket, Refill

__all__ = ["FakePangoCDP", "FakeRequest"]

AUTH_PATH = "/api/accounts/authen"
INGEST_PATH = "/dhub-i/api/v1.0/ingest"

#: What a scripted step may say: "ok" (behave normally), "429" (or "429:<header value>"),
#: any other HTTP status such as "500" or "503", "drop" (close the connection without reading
#: the request) or "drop-after" (accept the entries, then close without answering).
ScriptStep = str
#: A poison-record hook: return a message to refuse the request because of this entry.
EntryRejecter = Callable[[dict[str, Any]], "str | None"]


def _valid_step(step: object) -> bool:
    if not isinstance(step, str):
        return False
    if step in ("ok", "drop", "drop-after", "429") or step.startswith("429:"):
        return True
    return step.isdigit() and 100 <= int(step) <= 599


class Credentials(TypedDict):
    username: str
    api_key: str
    group_key: str


class ClientKwargs(Credentials):
    auth_url: str
    ingest_url: str


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One ingest request as the fake saw it."""

    at: float
    status: int
    entries: int
    outcome: str  # "accepted", "rate-limited", "unauthorized", "invalid", "fault", "dropped"
    init_data: bool | None = None
    size: int | None = None  # body bytes, for requests whose body was read
    #: The envelope as sent (objectType, source and the optional fields), for accepted ones.
    envelope: dict[str, Any] | None = None


class FakePangoCDP:
    """``async with FakePangoCDP() as fake:`` serves ``fake.auth_url`` and ``fake.ingest_url``.

    Faults by probability, drawn per request from a seeded generator: ``drop_rate`` (the
    connection is cut before the request is read), ``drop_after_rate`` (the entries are stored,
    then the connection is cut: the client cannot know, and a retry duplicates them),
    ``error_rate`` (``error_status``, 503 by default). ``reject_entry`` refuses a request
    with 400 when it returns a message for one of its entries; the message names the entry
    (``entries[i]: ...``) unless ``name_rejected_index=False``.

    >>> async with FakePangoCDP(rate_limits=[RateLimit(20, 1.0)]) as fake:   # doctest: +SKIP
    ...     async with PangoCDPClient(**fake.credentials(), auth_url=fake.auth_url,
    ...                               ingest_url=fake.ingest_url) as client:
    ...         await client.ingest("order", [{"orderId": "1"}], source="POS")
    ...     assert len(fake.accepted) == 1

    ``on_request`` is called with each :class:`FakeRequest` as it is answered (a hook for
    tests that act at a given point of a run). ``rate_limits=None`` disables rate limiting.
    ``clock`` (seconds) drives the bucket and token expiry; it defaults to the loop's clock.
    """

    def __init__(
        self,
        *,
        username: str = "demo",
        api_key: str = "demo-api-key",
        group_key: str = "demo-group-key",
        token_lifetime_s: float = 1800.0,
        rate_limits: Sequence[RateLimit] | None = DOCUMENTED_LIMITS,
        refill: Refill = "greedy",
        refill_phase: float = 0.0,
        latency_s: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 503,
        drop_rate: float = 0.0,
        drop_after_rate: float = 0.0,
        script: Iterable[ScriptStep] = (),
        reject_entry: EntryRejecter | None = None,
        name_rejected_index: bool = True,
        keep_entries: bool = True,
        keep_requests: bool = True,
        on_request: Callable[[FakeRequest], Any] | None = None,
        clock: Callable[[], float] | None = None,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for name, value in (("username", username), ("api_key", api_key),
                            ("group_key", group_key), ("host", host)):
            check_str(name, value)
        check_seconds("token_lifetime_s", token_lifetime_s, allow_zero=False)
        check_seconds("latency_s", latency_s)
        for name, rate in (("error_rate", error_rate), ("drop_rate", drop_rate),
                           ("drop_after_rate", drop_after_rate)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise TypeError(f"{name} must be a probability, got {rate!r}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be from 0 to 1, got {rate!r}")
        check_int("error_status", error_status, low=400, high=599)
        check_int("port", port, low=0, high=65_535)
        if refill not in ("greedy", "interval"):
            raise ValueError(f"refill must be 'greedy' or 'interval', got {refill!r}")
        if rate_limits is not None:
            rate_limits = validate_rate_limits(rate_limits)
        if reject_entry is not None and not callable(reject_entry):
            raise TypeError(f"reject_entry must be callable, got {reject_entry!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if on_request is not None and not callable(on_request):
            raise TypeError(f"on_request must be callable, got {on_request!r}")
        check_seconds("refill_phase", refill_phase)
        check_bool("keep_entries", keep_entries)
        check_bool("keep_requests", keep_requests)
        check_bool("name_rejected_index", name_rejected_index)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if isinstance(script, (str, bytes)) or not isinstance(script, Iterable):
            raise TypeError(f"script must be a list of steps, got {script!r}")
        script = list(script)
        for step in script:
            if not _valid_step(step):
                raise ValueError(f"script has an unknown step {step!r}: use 'ok', '429', "
                                 "'429:<header>', a status such as '503', 'drop' or "
                                 "'drop-after'")
        self.username = username
        self.api_key = api_key
        self.group_key = group_key
        self.token_lifetime_s = token_lifetime_s
        self.rate_limits = None if rate_limits is None else tuple(rate_limits)
        self.refill: Refill = refill
        self.refill_phase = refill_phase
        self.latency_s = latency_s
        self.error_rate = error_rate
        self.error_status = error_status
        self.drop_rate = drop_rate
        self.drop_after_rate = drop_after_rate
        self.name_rejected_index = name_rejected_index
        self.script: deque[ScriptStep] = deque(script)
        self.reject_entry = reject_entry
        self.keep_entries = keep_entries
        self.keep_requests = keep_requests
        #: Requests answered, by outcome ("accepted", "rate-limited", ...), kept whatever
        #: ``keep_requests`` says.
        self.outcomes: Counter[str] = Counter()
        self.on_request = on_request
        self._clock = clock
        self._rng = random.Random(seed)
        self._host = host
        self._port = port
        self._tokens: dict[str, float] = {}
        self._bucket: Bucket4jBucket | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        #: Every accepted entry, in arrival order (if ``keep_entries``).
        self.accepted: list[dict[str, Any]] = []
        self.accepted_count = 0
        #: Every ingest request, in arrival order (if ``keep_requests``: a long-running sandbox
        #: keeps only the counts in ``outcomes``).
        self.requests: list[FakeRequest] = []
        self.auth_calls = 0

    # --- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> FakePangoCDP:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port unless one was given)."""
        app = web.Application()
        app.router.add_post(AUTH_PATH, self._handle_auth)
        app.router.add_post(INGEST_PATH, self._handle_ingest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        if self.rate_limits is not None:
            self._bucket = Bucket4jBucket(
                self.rate_limits, self.refill, start=self.now(), phase=self.refill_phase
            )

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def auth_url(self) -> str:
        """The auth endpoint's URL (after ``start()``)."""
        return self.base_url + AUTH_PATH

    @property
    def ingest_url(self) -> str:
        """The ingest endpoint's URL (after ``start()``)."""
        return self.base_url + INGEST_PATH

    def credentials(self) -> Credentials:
        """``username``, ``api_key`` and ``group_key`` keyword arguments for the client."""
        return {"username": self.username, "api_key": self.api_key, "group_key": self.group_key}

    def client_kwargs(self) -> ClientKwargs:
        """Credentials and both URLs, ready for ``PangoCDPClient(**fake.client_kwargs())``."""
        return {
            "username": self.username,
            "api_key": self.api_key,
            "group_key": self.group_key,
            "auth_url": self.auth_url,
            "ingest_url": self.ingest_url,
        }

    def now(self) -> float:
        """The server's clock (the injected one, or the event loop's)."""
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def expire_tokens(self) -> None:
        """Make every issued token invalid (the next ingest with one gets a 401)."""
        self._tokens.clear()

    @property
    def rate_limited(self) -> int:
        """How many requests were answered 429 by the bucket (scripted ones not included)."""
        return self._bucket.rejected if self._bucket is not None else 0

    # --- handlers -------------------------------------------------------------------------------
    async def _handle_auth(self, request: web.Request) -> web.StreamResponse:
        self.auth_calls += 1
        try:
            creds = AuthRequest.model_validate(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ValidationError):
            return _error(400, "MISSING_INFO", "Username and ApiKey are required")
        if not creds.username or not creds.api_key.get_secret_value():
            return _error(400, "MISSING_INFO", "Username and ApiKey are required")
        if not creds.group_key.get_secret_value():
            return _error(400, "MISSING_INFO", "Organization Context is not set")
        if (
            creds.username != self.username
            or creds.api_key.get_secret_value() != self.api_key
            or creds.group_key.get_secret_value() != self.group_key
        ):
            return _error(400, "INVALID_CREDENTIALS", "Username or ApiKey is incorrect")
        token = secrets.token_urlsafe(24)
        now = self.now()
        self._tokens[token] = now + self.token_lifetime_s
        issued_ms = int(now * 1000)
        return web.json_response(
            {
                "expiredAt": issued_ms + int(self.token_lifetime_s * 1000),
                "success": True,
                "expiredAfter": self.token_lifetime_s,
                "issuedAt": issued_ms,
                "token": token,
                "status": "authenticated",
            },
            dumps=_dumps,
        )

    async def _handle_ingest(self, request: web.Request) -> web.StreamResponse:
        arrived = self.now()
        init_flag = request.query.get("initData", "false")
        headers: dict[str, str] = {}
        # Bucket4j's servlet filter runs before the application: every request costs a token.
        if self._bucket is not None:
            verdict = self._bucket.try_consume(arrived)
            if not verdict.accepted:
                self._log(arrived, 429, 0, "rate-limited")
                return _too_many(verdict.retry_after_header)
            headers[HEADER_RATE_LIMIT_REMAINING] = str(verdict.remaining)
        step = self.script.popleft() if self.script else "ok"
        if step == "ok":
            roll = self._rng.random()
            if roll < self.drop_rate:
                step = "drop"
            elif roll < self.drop_rate + self.drop_after_rate:
                step = "drop-after"
            elif roll < self.drop_rate + self.drop_after_rate + self.error_rate:
                step = str(self.error_status)
        if step == "drop":
            self._log(arrived, 0, 0, "dropped")
            return _drop(request)
        if step.startswith("429"):
            self._log(arrived, 429, 0, "rate-limited")
            return _too_many(step.partition(":")[2] or "0")
        if step not in ("ok", "drop-after"):
            self._log(arrived, int(step), 0, "fault")
            return _error(int(step), "INTERNAL_ERROR", "injected server error")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

        token = request.headers.get(HEADER_TOKEN)
        expiry = self._tokens.get(token or "")
        if expiry is None or expiry <= self.now():
            self._log(arrived, 401, 0, "unauthorized")
            return _error(401, "UNAUTHORIZED", "Token is missing, invalid or expired")
        if request.headers.get(HEADER_API_KEY) != self.api_key:
            self._log(arrived, 401, 0, "unauthorized")
            return _error(401, "UNAUTHORIZED", "API_KEY does not match the token")
        if init_flag not in ("true", "false"):
            self._log(arrived, 400, 0, "invalid")
            return _error(400, "MISSING_INFO", "Invalid value of: initData")
        try:
            body = IngestRequestBody.model_validate(orjson.loads(await request.read()))
        except orjson.JSONDecodeError:
            self._log(arrived, 400, 0, "invalid")
            return _error(400, "MISSING_INFO", "Request body is not valid JSON")
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            field = str(loc[0]) if loc else "body"
            self._log(arrived, 400, 0, "invalid")
            return _error(400, "MISSING_INFO", f"Invalid value of: {field}")
        if self.reject_entry is not None:
            for i, entry in enumerate(body.entries):
                reason = self.reject_entry(entry)
                if reason is not None:
                    self._log(arrived, 400, len(body.entries), "invalid")
                    where = f"entries[{i}]: " if self.name_rejected_index else ""
                    return _error(400, "INVALID_ENTRY", where + reason)
        if self.keep_entries:
            self.accepted.extend(body.entries)
        self.accepted_count += len(body.entries)
        if step == "drop-after":
            self._log(arrived, 0, len(body.entries), "dropped")
            return _drop(request)
        self._log(arrived, 200, len(body.entries), "accepted", init_flag == "true",
                  request.content_length,
                  body.model_dump(by_alias=True, exclude_none=True, exclude={"entries"}))
        return web.json_response(
            {"success": True, "requestId": uuid.uuid4().hex}, headers=headers, dumps=_dumps
        )

    def _log(
        self, at: float, status: int, entries: int, outcome: str, init: bool | None = None,
        size: int | None = None, envelope: dict[str, Any] | None = None,
    ) -> None:
        request = FakeRequest(at, status, entries, outcome, init, size, envelope)
        self.outcomes[outcome] += 1
        if self.keep_requests:
            self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"success": False, "errorCode": code, "message": message, "requestId": uuid.uuid4().hex},
        status=status,
        dumps=_dumps,
    )


def _too_many(retry_after: str) -> web.Response:
    return web.json_response(
        {"message": "Too many requests!"},
        status=429,
        headers={HEADER_RETRY_AFTER: retry_after},
        dumps=_dumps,
    )


def _drop(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
