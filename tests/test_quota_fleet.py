"""Four OS processes, one quota: the proof of the shared backends on real processes.

Each run starts a FakePangoCDP in a process of its own (scaled windows: 20 per second and 100
per five seconds, Bucket4j greedy or interval refill) and four worker processes, each a
PangoCDPClient sending its own records through the shared quota (``benchmarks/_fleet.py``). The
server's own records decide: no 429, every record received exactly once, and the requests it
accepted at least 95% of the most its windows let through between the first and the last.

The control run gives each process a local scheduler instead: the same fleet is then rejected,
which shows the proof can fail. Outages: another process holds the SQLite file locked past the
lock timeout; Redis is killed mid-run and restarted empty. Nothing may arrive at the server
while the backend is gone (beyond the requests already in flight), and the run must complete.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from benchmarks._fleet import FLEET_LIMITS, FleetResult, run_fleet

from .quota_servers import own_redis_server, redis_url

pytestmark = pytest.mark.slow

RECORDS = 240  # 12 groups of 20: about 11 s per run


def _check(result: FleetResult) -> None:
    assert result.rejected == 0, result.server["outcomes"]
    assert sum(w["rate_limited"] for w in result.workers) == 0
    assert result.ids_exactly_once()
    for worker in result.workers:
        assert worker["failed"] == worker["unsent"] == worker["in_doubt"] == 0, worker
    assert result.of_ceiling(FLEET_LIMITS) >= 0.95, result.of_ceiling(FLEET_LIMITS)


@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_four_processes_share_one_quota_through_sqlite(tmp_path: Path, refill: str) -> None:
    _check(run_fleet(f"sqlite:{tmp_path / 'quota.sqlite'}", records=RECORDS, refill=refill,
                     phase=0.37))


@pytest.mark.parametrize("refill", ["greedy", "interval"])
def test_four_processes_share_one_quota_through_redis(refill: str) -> None:
    _check(run_fleet(redis_url(), records=RECORDS, refill=refill, phase=0.37,
                     worker_options={"prefix": f"fleet-{uuid.uuid4().hex[:8]}"}))


def test_without_a_shared_quota_the_same_fleet_is_rejected() -> None:
    result = run_fleet("local", records=RECORDS, refill="interval", phase=0.37)
    assert result.rejected > 0


def _arrivals_between(result: FleetResult, start: float, end: float) -> int:
    offset = result.server["wall_minus_clock"]
    return sum(1 for at in result.server["arrived_at"] if start < at + offset < end)


def test_a_locked_sqlite_file_holds_every_send_until_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "quota.sqlite"
    events: dict[str, float] = {}

    def lock_for_a_while(start_at: float) -> dict[str, float]:
        time.sleep(max(0.0, start_at + 3.0 - time.time()))
        db = sqlite3.connect(path, isolation_level=None, timeout=10)
        db.execute("BEGIN EXCLUSIVE")
        events["locked"] = time.time()
        time.sleep(3.0)
        events["released"] = time.time()
        db.execute("ROLLBACK")
        db.close()
        return events

    result = run_fleet(f"sqlite:{path}", records=RECORDS, during=lock_for_a_while,
                       worker_options={"lock_timeout": 0.3})
    _check_outage(result, events["locked"], events["released"])
    assert sum(w["backend_errors"] for w in result.workers) > 0  # they did notice


def test_redis_killed_mid_run_holds_every_send_and_the_run_completes() -> None:
    events: dict[str, float] = {}
    with own_redis_server() as server:

        def kill_and_restart(start_at: float) -> dict[str, float]:
            time.sleep(max(0.0, start_at + 3.0 - time.time()))
            server.stop()
            events["locked"] = time.time()
            time.sleep(3.0)
            server.start()  # empty: the quota's record is lost, the processes must notice
            events["released"] = time.time()
            return events

        result = run_fleet(server.url, records=RECORDS, during=kill_and_restart,
                           worker_options={"backend_timeout": 0.3})
    _check_outage(result, events["locked"], events["released"])
    assert sum(w["backend_errors"] for w in result.workers) > 0


def _check_outage(result: FleetResult, gone: float, back: float) -> None:
    assert result.rejected == 0, result.server["outcomes"]
    assert result.ids_exactly_once()
    for worker in result.workers:
        assert worker["failed"] == worker["unsent"] == worker["in_doubt"] == 0, worker
    # Requests in flight when the backend went may still land (loopback: milliseconds).
    assert _arrivals_between(result, gone + 0.2, back) == 0
    assert _arrivals_between(result, back, back + 60) > 0  # and the run went on after it

