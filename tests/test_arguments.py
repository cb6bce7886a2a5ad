"""Bad arguments get a clear error at the call, before any I/O: a TypeError for a wrong type,
a ValueError for a wrong value, each naming the argument. Table-driven, one row per case."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from pangocdp_async import (
    PangoCDPClient,
    QuotaScheduler,
    RateLimit,
    RequestValidationError,
    RetryPolicy,
)
from pangocdp_async.testing import FakePangoCDP, InProcessTransport, run_in_virtual_time

NAN = float("nan")
INF = float("inf")
OK_CLIENT: dict[str, Any] = {"api_key": "k", "token": "t"}

CLIENT_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"timeout": "5"}, TypeError, "timeout"),
    ({"timeout": NAN}, ValueError, "timeout"),
    ({"timeout": INF}, ValueError, "timeout"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": True}, TypeError, "timeout"),
    ({"retry": "x"}, TypeError, "retry"),
    ({"retry": 3}, TypeError, "retry"),
    ({"api_key": 123}, TypeError, "api_key"),
    ({"token": b"t"}, TypeError, "token"),
    ({"username": 1}, TypeError, "username"),
    ({"group_key": 1}, TypeError, "group_key"),
    ({"auth_url": 1}, TypeError, "auth_url"),
    ({"ingest_url": "ftp://x"}, ValueError, "ingest_url"),
    ({"rate_limits": "50/s"}, TypeError, "rate_limits"),
    ({"rate_limits": [(50, 1.0)]}, TypeError, "rate_limits"),
    ({"limiter": 42}, TypeError, "limiter"),
    ({"limiter": "q"}, ValueError, "unknown quota"),
    ({"limiter": "sqlite:"}, ValueError, "needs a file"),
    ({"session": object()}, TypeError, "session"),
    ({"transport": object()}, TypeError, "transport"),
    ({"clock": 3}, TypeError, "clock"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), CLIENT_CASES)
def test_client_arguments(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    """PangoCDPClient refuses each wrong argument by name."""
    with pytest.raises(error, match=name):
        PangoCDPClient(**{**OK_CLIENT, **kwargs})


INGEST_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"init_data": "yes"}, TypeError, "init_data"),
    ({"init_data": 1}, TypeError, "init_data"),
    ({"source": ""}, RequestValidationError, "source"),
    ({"source": 5}, RequestValidationError, "source"),
    ({"je_config_id": 5}, RequestValidationError, "je_config_id"),
    ({"je_event_key": ["k"]}, RequestValidationError, "je_event_key"),
    ({"ignored_update_cfs": "customField01"}, RequestValidationError, "ignored_update_cfs"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), INGEST_CASES)
def test_ingest_arguments(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    """ingest() refuses each wrong argument by name, and sends nothing."""
    transport = InProcessTransport()

    async def main() -> None:
        async with PangoCDPClient(**OK_CLIENT, transport=transport) as client:
            with pytest.raises(error, match=name):
                await client.ingest("order", [{"id": 1}], **{"source": "POS", **kwargs})
    run_in_virtual_time(main())
    assert transport.requests == 0


BULK_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"concurrency": "8"}, TypeError, "concurrency"),
    ({"concurrency": 0}, ValueError, "concurrency"),
    ({"batch_size": True}, TypeError, "batch_size"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 51}, ValueError, "batch_size"),
    ({"max_batch_bytes": "x"}, TypeError, "max_batch_bytes"),
    ({"max_batch_bytes": 5}, ValueError, "max_batch_bytes"),
    ({"retry": "x"}, TypeError, "retry"),
    ({"shutdown_timeout": "x"}, TypeError, "shutdown_timeout"),
    ({"shutdown_timeout": NAN}, ValueError, "shutdown_timeout"),
    ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
    ({"init_data": "yes"}, TypeError, "init_data"),
    ({"on_progress": 3}, TypeError, "on_progress"),
    ({"dead_letter": 3}, TypeError, "dead_letter"),
    ({"source": ""}, RequestValidationError, "source"),
]


@pytest.mark.parametrize("call", ["ingest_many", "stream"])
@pytest.mark.parametrize(("kwargs", "error", "name"), BULK_CASES)
def test_bulk_arguments(call: str, kwargs: dict[str, Any], error: type[Exception],
                        name: str) -> None:
    """ingest_many and stream refuse each wrong argument by name, before reading a record."""
    read: list[int] = []

    def records() -> Any:
        read.append(1)
        yield {"id": 1}

    async def main() -> None:
        async with PangoCDPClient(**OK_CLIENT, transport=InProcessTransport()) as client:
            options = {"source": "POS", **kwargs}

            async def start() -> None:
                if call == "ingest_many":
                    await client.ingest_many("order", records(), **options)
                else:
                    client.stream("order", **options)
            with pytest.raises(error, match=name):
                await start()
    run_in_virtual_time(main())
    assert read == []


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"linger": 0}, ValueError, "linger"),
    ({"linger": "1"}, TypeError, "linger"),
    ({"max_pending": 0}, ValueError, "max_pending"),
    ({"max_pending": 2.5}, TypeError, "max_pending"),
])
def test_stream_arguments(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    """stream() refuses its own wrong arguments by name."""
    async def main() -> None:
        async with PangoCDPClient(**OK_CLIENT, transport=InProcessTransport()) as client:
            with pytest.raises(error, match=name):
                client.stream("order", source="POS", **kwargs)
    run_in_virtual_time(main())


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"max_attempts": "3"}, TypeError, "max_attempts"),
    ({"max_attempts": True}, TypeError, "max_attempts"),
    ({"max_attempts": 0}, ValueError, "max_attempts"),
    ({"max_rate_limited": -1}, ValueError, "max_rate_limited"),
    ({"backoff_initial_s": "0.5"}, TypeError, "backoff_initial_s"),
    ({"backoff_max_s": INF}, ValueError, "backoff_max_s"),
    ({"time_budget_s": NAN}, ValueError, "time_budget_s"),
    ({"split_bad_requests": "yes"}, TypeError, "split_bad_requests"),
])
def test_retry_policy_arguments(kwargs: dict[str, Any], error: type[Exception],
                                name: str) -> None:
    """RetryPolicy refuses each wrong field by name."""
    with pytest.raises(error, match=name):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"policy": "leaky"}, ValueError, "policy"),
    ({"save_every": 0}, ValueError, "save_every"),
    ({"save_every": "50"}, TypeError, "save_every"),
    ({"max_retry_after": 0}, ValueError, "max_retry_after"),
    ({"max_retry_after": "60"}, TypeError, "max_retry_after"),
    ({"retry_after_pad": -1}, ValueError, "retry_after_pad"),
    ({"clock_step_allowance": NAN}, ValueError, "clock_step_allowance"),
    ({"count_rejected": 1}, TypeError, "count_rejected"),
    ({"margin": 0.25}, TypeError, "margin"),
    ({"clock": 3, "sleep": asyncio.sleep}, TypeError, "clock"),
    ({"wall_clock": 3}, TypeError, "wall_clock"),
    ({"store": "quota.sqlite3"}, TypeError, "store"),
    ({"limits": [RateLimit(1, 1.0), RateLimit(2, 1.0)]}, ValueError, "same period"),
])
def test_scheduler_arguments(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    """QuotaScheduler refuses each wrong argument by name."""
    with pytest.raises(error, match=name):
        QuotaScheduler(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"username": 1}, TypeError, "username"),
    ({"token_lifetime_s": 0}, ValueError, "token_lifetime_s"),
    ({"latency_s": -1}, ValueError, "latency_s"),
    ({"error_rate": 1.5}, ValueError, "error_rate"),
    ({"drop_rate": "0.1"}, TypeError, "drop_rate"),
    ({"error_status": 200}, ValueError, "error_status"),
    ({"port": 70_000}, ValueError, "port"),
    ({"refill": "leaky"}, ValueError, "refill"),
    ({"rate_limits": [(50, 1.0)]}, TypeError, "rate_limits"),
    ({"reject_entry": "no"}, TypeError, "reject_entry"),
])
def test_fake_server_arguments(kwargs: dict[str, Any], error: type[Exception],
                               name: str) -> None:
    """FakePangoCDP refuses each wrong argument by name."""
    with pytest.raises(error, match=name):
        FakePangoCDP(**kwargs)


def test_the_accepted_forms_stay_accepted() -> None:
    """A ClientTimeout, an int timeout and a zero budget are fine (a guard for the checks
    above)."""
    PangoCDPClient(**OK_CLIENT, timeout=aiohttp.ClientTimeout(total=5))
    PangoCDPClient(**OK_CLIENT, timeout=2)
    RetryPolicy(max_attempts=1, time_budget_s=0)


@pytest.mark.parametrize(("build", "error", "name"), [
    (lambda: PangoCDPClient(**OK_CLIENT, timeout=10**400), ValueError, "timeout"),
    (lambda: RetryPolicy(time_budget_s=10**400), ValueError, "time_budget_s"),
    (lambda: QuotaScheduler(max_retry_after=10**400), ValueError, "max_retry_after"),
    (lambda: PangoCDPClient(**OK_CLIENT, auth_url=""), ValueError, "auth_url"),
    (lambda: PangoCDPClient(**OK_CLIENT, ingest_url=""), ValueError, "ingest_url"),
    (lambda: PangoCDPClient(api_key="k", token=" "), ValueError, "token"),
    (lambda: QuotaScheduler(rng=5), TypeError, "rng"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(refill_phase="x"), TypeError, "refill_phase"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(clock=5), TypeError, "clock"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(script="ok"), TypeError, "script"),
    (lambda: FakePangoCDP(script=["ok", "explode"]), ValueError, "script"),
    (lambda: FakePangoCDP(seed=[1]), TypeError, "seed"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(keep_entries="yes"), TypeError, "keep_entries"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(keep_requests=1), TypeError, "keep_requests"),  # type: ignore[arg-type]
    (lambda: FakePangoCDP(on_request=3), TypeError, "on_request"),  # type: ignore[arg-type]
])
def test_edge_values_are_refused_by_name(build: Any, error: type[Exception], name: str) -> None:
    """Values that slipped through before: a number too large for a float (an OverflowError),
    an empty URL (silently replaced by the production one), an empty token, and the fake's
    own knobs."""
    with pytest.raises(error, match=name):
        build()


def test_an_empty_url_from_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """PANGOCDP_INGEST_URL set but empty is an error, never a fall-back to production."""
    monkeypatch.setenv("PANGOCDP_INGEST_URL", "")
    with pytest.raises(ValueError, match="ingest_url"):
        PangoCDPClient(**OK_CLIENT)
