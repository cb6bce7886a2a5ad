"""The ``pangocdp`` command: validate throughput, peak memory, and the journal's cost.

    python -m benchmarks.cli [--records 1000000] [--small 100000] [--ingest 100000] [--rounds 3]

Three tables, each against a baseline measured in the same run:

1. ``validate`` on a generated JSON Lines file of realistic orders (``sample_orders``): records/s
   of the whole dry run (read, parse, check, build every batch) against the least any tool must
   do (read each line and ``orjson.loads`` it). CPU time of this process.
2. Peak RSS of ``pangocdp validate`` and of ``pangocdp ingest --sandbox --no-limits`` on the small
   and the large file, each in a fresh process: flat means the large run peaks within 10% of
   the small one.
3. CPU per request of ``ingest`` (reader, keys, journal writes: two commits per batch) against
   ``ingest_many`` fed the same lines through ``orjson.loads``, both with windows lifted, against
   a FakePangoCDP in another process, so only the client's CPU is counted. Rounds alternate; the
   table shows the median over rounds of the ratio to the same round's ``ingest_many``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from benchmarks._server import fake_in_subprocess
from pangocdp_async import PangoCDPClient
from pangocdp_async.cli import _job, main
from pangocdp_async.cli._inputs import InputFile
from pangocdp_async.testing import sample_orders, write_jsonl


def bare_parse(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for line in f:
            orjson.loads(line)
            n += 1
    return n


def validate(path: Path) -> None:
    code = main(["validate", str(path), "--object-type", "order", "--source", "POS", "-q"])
    assert code == 0, code


def cpu(func: Any, *args: Any) -> float:
    start = time.process_time()
    func(*args)
    return time.process_time() - start


def peak_rss_mib(args: list[str]) -> float:
    """Peak RSS of ``pangocdp <args>`` in a fresh process (only child processes counted)."""
    code = ("import resource, sys\nfrom pangocdp_async.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *args],  # noqa: S603 -- our own code
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def lines(path: Path) -> Iterator[Any]:
    with path.open("rb") as f:
        for line in f:
            yield orjson.loads(line)


async def with_ingest_many(path: Path, auth_url: str, ingest_url: str, n: int) -> int:
    async with PangoCDPClient(username="demo", api_key="demo-api-key",
                              group_key="demo-group-key", auth_url=auth_url,
                              ingest_url=ingest_url, rate_limits=()) as client:
        report = await client.ingest_many("order", lines(path), source="POS")
    assert report.records_accepted == n, report.summary()
    return report.requests


async def with_cli(path: Path, job: Path, auth_url: str, ingest_url: str, n: int) -> int:
    spec = _job.IngestJob(
        files=[InputFile(0, str(path), "jsonl", False)], object_type="order", source="POS",
        job=job, restart=True, limits=(),  # the fake in the other process has no windows
        credentials=_job.Credentials("demo", "demo-api-key", "demo-group-key", auth_url,
                                     ingest_url))
    result = await _job.run_job(spec, install_signals=False)
    assert result.summary["run"]["accepted"] == n, result.summary
    return int(result.summary["run"]["requests"])


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--ingest", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl"
        write_jsonl(big, sample_orders(args.records))
        write_jsonl(small, sample_orders(args.small))
        size_mib = big.stat().st_size / 2**20

        # 1. validate throughput
        base = cpu(bare_parse, big)
        ours = cpu(validate, big)
        print(f"\nvalidate, {args.records:,} lines ({size_mib:,.0f} MiB), CPU time")
        print(f"{'':<34}{'records/s':>12}{'ratio':>8}")
        print(f"{'read + orjson.loads (baseline)':<34}{args.records / base:>12,.0f}{1.0:>8.2f}")
        print(f"{'pangocdp validate':<34}{args.records / ours:>12,.0f}{ours / base:>8.2f}")

        # 2. peak memory
        print("\npeak RSS (MiB), each in a fresh process")
        print(f"{'':<44}{args.small:>12,}{args.records:>12,}{'ratio':>8}")
        rows = [("pangocdp validate", ["validate", "{}", "--object-type", "order",
                                       "--source", "POS", "-q"]),
                ("pangocdp ingest --sandbox --no-limits",
                 ["ingest", "{}", "--object-type", "order", "--source", "POS", "--sandbox",
                  "--no-limits", "--quiet", "--restart", "--job", str(Path(tmp) / "m.sqlite")])]
        for label, template in rows:
            peaks = []
            for path in (small, big):
                peaks.append(peak_rss_mib([str(path) if a == "{}" else a for a in template]))
            print(f"{label:<44}{peaks[0]:>12.1f}{peaks[1]:>12.1f}{peaks[1] / peaks[0]:>8.2f}")

        # 3. CPU per request: the command's journaled run against ingest_many
        feed = Path(tmp) / "feed.jsonl"
        write_jsonl(feed, sample_orders(args.ingest))
        with fake_in_subprocess() as (auth_url, ingest_url):
            ratios, best = [], {"ingest_many": float("inf"), "pangocdp ingest": float("inf")}
            for _ in range(args.rounds):
                t0 = time.process_time()
                requests = asyncio.run(with_ingest_many(feed, auth_url, ingest_url,
                                                        args.ingest))
                base = (time.process_time() - t0) / requests
                t0 = time.process_time()
                requests = asyncio.run(with_cli(feed, Path(tmp) / "job.sqlite", auth_url,
                                                ingest_url, args.ingest))
                ours = (time.process_time() - t0) / requests
                best["ingest_many"] = min(best["ingest_many"], base)
                best["pangocdp ingest"] = min(best["pangocdp ingest"], ours)
                ratios.append(ours / base)
                print(f"  round: ingest_many {base * 1e6:.0f} us, pangocdp ingest "
                      f"{ours * 1e6:.0f} us, ratio {ours / base:.2f}", flush=True)
        print(f"\nCPU per request, {args.ingest:,} records in {requests:,} requests, windows "
              f"lifted, fake in another process, {args.rounds} rounds")
        print(f"{'':<24}{'best us/request':>16}{'median ratio':>14}")
        print(f"{'ingest_many':<24}{best['ingest_many'] * 1e6:>16.0f}{1.0:>14.2f}")
        print(f"{'pangocdp ingest':<24}{best['pangocdp ingest'] * 1e6:>16.0f}"
              f"{statistics.median(ratios):>14.2f}")


if __name__ == "__main__":
    main_()
