"""Budgets win over pauses: a long 429 pause fails what cannot wait, at once, and cancelling
during a pause returns at once; against FakePangoCDP over loopback."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from pangocdp_async import PangoCDPClient, QuotaWaitError, RateLimitedError, RetryPolicy
from pangocdp_async.testing import FakePangoCDP
from tests.conftest import wait_until


async def test_ingest_raises_instead_of_sleeping_through_a_long_pause() -> None:
    """After a 429 saying 3600 s, the next ingest() raises QuotaWaitError at once (the client's
    budget is 600 s) with retry_after the rest of the pause, and sends nothing."""
    async with FakePangoCDP(rate_limits=None, script=["429:3600"]) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=()) as client:
            with pytest.raises(RateLimitedError) as first:
                await client.ingest("order", [{"id": 1}], source="POS")
            assert first.value.retry_after == 3600.0
            with pytest.raises(QuotaWaitError) as wait:
                await asyncio.wait_for(
                    client.ingest("order", [{"id": 2}], source="POS"), timeout=5.0)
    retry_after = wait.value.retry_after
    assert retry_after is not None
    assert 3600.0 <= retry_after <= 3601.0 * 1.1
    assert wait.value.budget == 600.0
    assert len(fake.requests) == 1


async def test_a_batch_whose_retry_would_outlast_its_budget_fails_at_once() -> None:
    """ingest_many: a batch answered 429 with a one-hour hint is reported failed at once with
    QuotaWaitError (retry_after included), not retried an hour later; one request was made."""
    async with FakePangoCDP(rate_limits=None, script=["429:3600"]) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=()) as client:
            report = await asyncio.wait_for(
                client.ingest_many("order", ({"id": i} for i in range(50)), source="POS",
                                   concurrency=1), timeout=5.0)
    assert report.records_failed == 50
    assert report.records_accepted == 0
    errors = {type(f.error) for f in report.failures}
    assert errors == {QuotaWaitError}
    assert report.requests == 1
    assert report.rate_limited == 1
    assert len(fake.requests) == 1


async def test_cancelling_during_a_pause_returns_at_once() -> None:
    """Two senders wait out a 600-s pause (their budget allows it); cancelling the run returns
    at once (before: the shutdown timeout of 30 s), with every record read accounted for."""
    async with FakePangoCDP(rate_limits=None, script=["ok", "429:600"]) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=(),
                                  retry=RetryPolicy(time_budget_s=7200.0)) as client:
            run = asyncio.ensure_future(client.ingest_many(
                "order", ({"id": i} for i in range(500)), source="POS", concurrency=2))
            await wait_until(lambda: client.limiter.rate_limited == 1 and client.limiter.waiting,
                         "a sender waiting out the pause")
            loop = asyncio.get_running_loop()
            cancelled_at = loop.time()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            took = loop.time() - cancelled_at
            report = client.last_report
    assert took < 1.0
    assert report is not None
    assert report.cancelled
    assert report.records_accepted in (50, 100)  # a second batch may beat the 429's answer
    assert report.records_accepted + report.records_failed + len(report.unsent) == (
        report.records_read
    )
