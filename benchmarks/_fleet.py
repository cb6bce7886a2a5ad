"""A fleet: N OS processes, each a PangoCDPClient sending its own records through one shared
quota, against one FakePangoCDP in another process. Used by the proof
(``tests/test_quota_fleet.py``) and the benchmark (``benchmarks/quota.py``).

    python -m benchmarks._fleet '<json options>'     (one worker; the orchestrator starts them)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pangocdp_async.testing._simulation import sliding_ceiling

from ._server import RemoteFake, remote_fake

#: The scaled windows of the proof: a second and five seconds (the documented windows' shape).
FLEET_LIMITS = ((20, 1.0), (100, 5.0))
#: The loopback's margin: round trips here are a millisecond (the default, 0.1 s, allows for
#: a real network and costs 7% of these short windows).
FLEET_MARGIN_S = 0.02


def _worker(options: dict[str, Any]) -> dict[str, Any]:
    from pangocdp_async import (
        Limiter,
        Margin,
        PangoCDPClient,
        QuotaScheduler,
        RateLimit,
        RedisQuotaBackend,
        SharedQuotaScheduler,
        SQLiteQuotaBackend,
    )

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[worker {options['index']}] %(levelname)s %(message)s")
    quota = options["quota"]
    backend: Any = None
    if quota == "local":
        pass
    elif quota.startswith("sqlite:"):
        backend = SQLiteQuotaBackend(quota[len("sqlite:"):],
                                     lock_timeout=options.get("lock_timeout", 2.0))
    else:
        backend = RedisQuotaBackend(quota, timeout=options.get("backend_timeout", 1.0),
                                    prefix=options.get("prefix", "pangocdp:quota"))
    limits = [RateLimit(c, p) for c, p in options["limits"]]
    limiter: Limiter
    if quota == "local":  # the control: each process paces alone
        limiter = QuotaScheduler(limits, policy=options.get("policy", "sliding"),
                                 margin=Margin(options["margin"]))
    else:
        limiter = SharedQuotaScheduler(backend, limits, policy=options.get("policy", "sliding"),
                                       margin=Margin(options["margin"]))
    n, first = options["records"], options["first"]
    records = ({"id": f"r{first + i}", "orderId": f"{first + i}"} for i in range(n))

    async def main() -> dict[str, Any]:
        async with PangoCDPClient(username="demo", api_key="demo-api-key",
                                  group_key="demo-group-key", auth_url=options["auth_url"],
                                  ingest_url=options["ingest_url"], limiter=limiter,
                                  timeout=10.0) as client:
            # Start together: each process waits for the same instant on the shared clock.
            await asyncio.sleep(max(0.0, options["start_at"] - time.time()))
            report = await client.ingest_many(
                "order", records, source="fleet", batch_size=options["batch_size"],
                concurrency=options.get("concurrency", 8))
            stats = client.stats
        return {"accepted": report.records_accepted, "failed": report.records_failed,
                "unsent": len(report.unsent), "in_doubt": len(report.in_doubt),
                "requests": report.requests, "rate_limited": report.rate_limited,
                "backend_errors": stats.quota_backend_errors,
                "reservations": limiter.reservations, "ended_at": time.time()}

    return asyncio.run(main())


@dataclass
class FleetResult:
    workers: list[dict[str, Any]]
    server: dict[str, Any]
    records: int
    elapsed_s: float
    events: dict[str, float] = field(default_factory=dict)

    @property
    def accepted_requests(self) -> int:
        return len(self.server["accepted_at"])

    @property
    def rejected(self) -> int:
        return int(self.server["outcomes"].get("rate-limited", 0))

    def ids_exactly_once(self) -> bool:
        ids = self.server["ids"]
        return len(ids) == self.records and all(count == 1 for count in ids.values())

    def of_ceiling(self, limits: tuple[tuple[int, float], ...]) -> float:
        """Accepted requests over the most the server's windows let through (against interval
        refill at an unknown phase: at most C in any window of T) between the first and the
        last acceptance."""
        from pangocdp_async import Margin, RateLimit

        times = sorted(self.server["accepted_at"])
        horizon = times[-1] - times[0] + 1e-6
        most = sliding_ceiling([RateLimit(c, p) for c, p in limits], Margin(0.0, 0.0), horizon)
        return len(times) / most


@contextmanager
def _server(limits: tuple[tuple[int, float], ...], refill: str,
            phase: float) -> Iterator[RemoteFake]:
    from pangocdp_async import RateLimit

    with remote_fake(rate_limits=[RateLimit(c, p) for c, p in limits], refill=refill,
                     refill_phase=phase) as fake:
        yield fake


def run_fleet(quota: str, *, processes: int = 4, records: int = 300, batch_size: int = 1,
              limits: tuple[tuple[int, float], ...] = FLEET_LIMITS, refill: str = "greedy",
              phase: float = 0.0, margin: float = FLEET_MARGIN_S, policy: str = "sliding",
              during: Callable[[float], dict[str, float]] | None = None,
              worker_options: dict[str, Any] | None = None) -> FleetResult:
    """Run ``processes`` workers splitting ``records`` between them; ``during(start_at)`` runs
    in this process while they work (to stop a backend, say) and returns events to report."""
    with _server(limits, refill, phase) as fake:
        start_at = time.time() + 2.0 + 0.3 * processes  # after every interpreter has started
        share = records // processes
        procs = []
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        for i in range(processes):
            count = share if i < processes - 1 else records - share * (processes - 1)
            options = {"index": i, "quota": quota, "limits": limits, "margin": margin,
                       "policy": policy, "records": count, "first": i * share,
                       "batch_size": batch_size, "auth_url": fake.auth_url,
                       "ingest_url": fake.ingest_url, "start_at": start_at,
                       **(worker_options or {})}
            procs.append(subprocess.Popen(  # noqa: S603 -- our own interpreter and module
                [sys.executable, "-m", "benchmarks._fleet", json.dumps(options)],
                stdout=subprocess.PIPE, env=env))
        events = during(start_at) if during is not None else {}
        workers = []
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"a fleet worker failed (exit {proc.returncode})")
            workers.append(json.loads(out))
        elapsed = time.time() - start_at
        return FleetResult(workers, fake.summary(), records, elapsed, events)


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
