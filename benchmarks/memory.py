"""Memory on any input size: peak RSS of ingest_many for 100k and 1M records.

    python -m benchmarks.memory [--sizes 100000 1000000]

Each size runs in a fresh Python process that reads records from a generator and sends them
through an instant in-process transport (no network, no pacing), so the peak resident set is
the client's own. The two peaks must be within 10% of each other: nothing grows with the input.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from pangocdp_async import PangoCDPClient
from pangocdp_async.testing import InProcessTransport


def records(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"orderId": f"ORD-{i:09d}", "orderStatus": "PAID", "customerId": f"C-{i % 9973}",
               "customerEmail": "someone@example.com", "createdDate": 1767225600000 + i,
               "items": [{"productSku": "SKU-100", "productName": "Beans", "quantity": 2}]}


async def run(n: int) -> int:
    async with PangoCDPClient(api_key="k", token="t", rate_limits=(),
                              transport=InProcessTransport(keep_entries=False)) as client:
        report = await client.ingest_many("order", records(n), source="POS")
    assert report.records_accepted == n, report.summary()
    return report.requests


def child(n: int) -> None:
    started = time.perf_counter()
    requests = asyncio.run(run(n))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{n} {requests} {peak_kib} {time.perf_counter() - started:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    rows = []
    for n in args.sizes:
        # Our own interpreter and module, with an int argument: nothing untrusted.
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "benchmarks.memory", "--child", str(n)],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        rows.append((int(out[0]), int(out[1]), int(out[2]), float(out[3])))
    base = rows[0][2]
    print("| records   | requests | peak RSS MiB | vs smallest | seconds |")
    print("|-----------|----------|--------------|-------------|---------|")
    for n, requests, peak, secs in rows:
        print(f"| {n:>9,} | {requests:>8,} | {peak / 1024:>12.1f} | {peak / base:>10.3f}x |"
              f" {secs:>7.2f} |")


if __name__ == "__main__":
    main()
