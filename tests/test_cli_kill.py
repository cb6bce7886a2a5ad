"""`kill -9` at any moment loses nothing: `pangocdp ingest` runs as a real subprocess against a
FakePangoCDP in this process, is killed with SIGKILL in the middle of a burst (requests in
flight), and resumed. The fake's record proves every record arrived, and that the duplicates
are no more than what the journal held as sent-but-unconfirmed at the kill (the batches in
flight), which the resumed run reports.

A batch is in flight from the moment its first request is handed to the transport until its
outcome is committed (with its sender's next dispatch, or when the event loop turns): each
sender has at most one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pangocdp_async.cli._journal import Journal
from pangocdp_async.testing import FakePangoCDP, FakeRequest, sample_orders, write_jsonl

CONCURRENCY = 8
BATCH = 50


async def run_cli(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pangocdp_async", "ingest", *args,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def kill_after(fake: FakePangoCDP, args: list[str], env: dict[str, str],
                     requests: int) -> int:
    """Start the command; SIGKILL it when the fake has accepted ``requests`` requests in
    all; return the records the journal holds as sent but unconfirmed."""
    reached = asyncio.Event()

    def hook(request: FakeRequest) -> None:
        if sum(r.outcome == "accepted" for r in fake.requests) >= requests:
            reached.set()

    fake.on_request = hook
    proc = await run_cli(args, env)
    await asyncio.wait_for(reached.wait(), timeout=120)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    fake.on_request = None
    journal = Journal(args[args.index("--job") + 1])
    try:
        return journal.state().unconfirmed
    finally:
        journal.close()


async def finish(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = await run_cli([*args, "--json"], env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    summary: dict[str, Any] = orjson.loads(out)
    return summary


async def kill_and_resume(tmp_path: Path, records: int, kills: list[int]) -> None:
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    write_jsonl(path, sample_orders(records))
    ids = [r["orderId"] for r in sample_orders(records)]
    # The client paces by the documented windows (bursts of 50); the fake answers after 20 ms,
    # so a kill in a burst catches requests in flight.
    async with FakePangoCDP(rate_limits=None, latency_s=0.02) as fake:
        env = {"PANGOCDP_USERNAME": fake.username, "PANGOCDP_API_KEY": fake.api_key,
               "PANGOCDP_GROUP_KEY": fake.group_key, "PANGOCDP_AUTH_URL": fake.auth_url,
               "PANGOCDP_INGEST_URL": fake.ingest_url}
        args = [str(path), "--object-type", "order", "--source", "POS", "--job", str(job),
                "--concurrency", str(CONCURRENCY), "--batch-size", str(BATCH)]
        unconfirmed_total = 0
        reported_total = 0
        for at in kills:
            unconfirmed = await kill_after(fake, args, env, at)
            assert unconfirmed <= CONCURRENCY * BATCH  # at most the batches in flight
            unconfirmed_total += unconfirmed
        summary = await finish(args, env)
        reported_total += summary["run"]["resent_after_interruption"]
        assert summary["job"]["complete"] is True
        assert summary["job"]["accepted"] == records
        counts = Counter(str(e["orderId"]) for e in fake.accepted)
    assert sorted(counts) == sorted(ids)  # every record arrived
    duplicates = sum(counts.values()) - len(ids)
    # Only records the journal held unconfirmed at a kill can have arrived twice; the resumed
    # run reports (at least) the ones still unconfirmed when it started.
    assert duplicates <= unconfirmed_total
    assert reported_total <= unconfirmed_total
    if len(kills) == 1:
        assert unconfirmed_total > 0  # the kill did catch requests in flight
        assert reported_total == unconfirmed_total
        assert duplicates <= reported_total


@pytest.mark.slow
async def test_kill_9_in_a_burst_loses_nothing(tmp_path: Path) -> None:
    await kill_and_resume(tmp_path, 3_000, [20])


@pytest.mark.slow
async def test_three_kills_at_different_moments_lose_nothing(tmp_path: Path) -> None:
    await kill_and_resume(tmp_path, 10_000, [15, 77, 140])
