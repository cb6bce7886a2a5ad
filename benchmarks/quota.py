"""Shared quota benchmark: what a reservation costs on each backend, and what four processes
sharing one quota get out of it.

    python -m benchmarks.quota [--reservations 2000] [--records 240] [--quick]

Table 1, reservation latency: one process, the documented windows, ``reserve()`` awaited and
timed (wall, µs) with nothing else running; each send is given back at once
(``complete(counted=False)``), so no window ever fills and every reservation is the path a send
takes when there is room. Baseline in the same run: an ``await`` of a completed future (what
any async call costs at least).

Table 2, four processes: the fleet of ``tests/test_quota_fleet.py`` (four worker processes, one
FakePangoCDP in another process with 20/1 s and 100/5 s, Bucket4j refill as shown). "of ceiling"
is accepted requests over the most those windows let through between the first and the last
acceptance (at most C in any window of T). The control row gives each process its own local
scheduler. Redis rows need ``redis-server`` on the PATH (started on a loopback port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pangocdp_async import (
    Limiter,
    QuotaScheduler,
    RedisQuotaBackend,
    SharedQuotaScheduler,
    SQLiteQuotaBackend,
)

from ._fleet import FLEET_LIMITS, run_fleet


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
    print()


@contextlib.contextmanager
def _redis() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp()
    proc = subprocess.Popen(  # noqa: S603 -- the Debian binary, our arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def _latencies(limiter: Limiter, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        r = await limiter.reserve()
        out.append(clock() - t0)
        limiter.complete(r, counted=False)
    await limiter.close()
    return out


async def _baseline(n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        f = loop.create_future()
        f.set_result(None)
        await f
        out.append(clock() - t0)
    return out


def latency_table(n: int, redis_url: str | None, folder: Path) -> None:
    rows: list[list[str]] = []

    def row(name: str, samples: list[float], base: float) -> None:
        ordered = sorted(samples)
        median = statistics.median(ordered) * 1e6
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6
        rows.append([name, f"{median:.1f}", f"{p99:.1f}", f"{median / base:.0f}x"])

    base_samples = asyncio.run(_baseline(n))
    base = statistics.median(base_samples) * 1e6
    row("await of a done future (baseline)", base_samples, base)
    row("local QuotaScheduler", asyncio.run(_latencies(QuotaScheduler(), n)), base)
    sqlite = SharedQuotaScheduler(SQLiteQuotaBackend(folder / "bench.sqlite"),
                                  namespace="bench")
    row("shared, SQLite (WAL, thread)", asyncio.run(_latencies(sqlite, n)), base)
    if redis_url is not None:
        redis = SharedQuotaScheduler(RedisQuotaBackend(redis_url, prefix="bench"),
                                     namespace="bench")
        row("shared, Redis (loopback)", asyncio.run(_latencies(redis, n)), base)
    print(f"Table 1, reservation latency ({n:,} reservations, documented windows, µs):\n")
    _table(["limiter", "median µs", "p99 µs", "median / baseline"], rows)


def fleet_table(records: int, redis_url: str | None, folder: Path) -> None:
    rows: list[list[str]] = []
    runs: list[tuple[str, str, str, dict[str, Any]]] = []
    for refill in ("greedy", "interval"):
        runs.append(("shared, SQLite", f"sqlite:{folder / f'fleet-{refill}.sqlite'}", refill,
                     {}))
        if redis_url is not None:
            runs.append(("shared, Redis", redis_url, refill, {"prefix": f"fleet-{refill}"}))
    runs.append(("local per process (control)", "local", "interval", {}))
    for name, quota, refill, options in runs:
        result = run_fleet(quota, records=records, refill=refill, phase=0.37,
                           worker_options=options)
        rows.append([name, refill, f"{result.accepted_requests:,}", f"{result.rejected:,}",
                     "yes" if result.ids_exactly_once() else "NO",
                     f"{100 * result.of_ceiling(FLEET_LIMITS):.1f}%"])
    print(f"Table 2, four processes, one quota ({records} requests of one record; windows "
          f"20/1 s and 100/5 s):\n")
    _table(["quota", "server refill", "accepted", "429s", "each once", "of ceiling"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reservations", type=int, default=2_000)
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--quick", action="store_true", help="500 reservations, 120 records")
    args = parser.parse_args()
    if args.quick:
        args.reservations, args.records = 500, 120
    with _redis() as redis_url, tempfile.TemporaryDirectory() as tmp:
        if redis_url is None:
            print("(no redis-server on the PATH: the Redis rows are left out)\n")
        latency_table(args.reservations, redis_url, Path(tmp))
        fleet_table(args.records, redis_url, Path(tmp))


if __name__ == "__main__":
    main()
