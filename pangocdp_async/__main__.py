"""``python -m pangocdp_async``: a demonstration run against an embedded FakePangoCDP.

It ingests the shipped sample file of orders (or the JSON Lines file given as the first
argument) through the real client, paced by the documented windows, and prints what landed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.resources import files
from pathlib import Path

import orjson

from . import IngestReport, PangoCDPClient
from .testing import FakePangoCDP


def _read_jsonl(text: str, name: str) -> list[dict[str, object]]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SystemExit(f"{name}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise SystemExit(f"{name}:{lineno}: a record must be a JSON object")
        records.append(record)
    return records


async def _demo(records: list[dict[str, object]], name: str) -> int:
    started = time.perf_counter()
    async with FakePangoCDP() as fake:
        print(f"FakePangoCDP listening on {fake.base_url}")
        async with PangoCDPClient(**fake.client_kwargs()) as client:

            def progress(report: IngestReport) -> None:
                print(f"  {report.records_accepted:>5} accepted after {report.requests} "
                      f"request(s), {client.stats.latency_p50_s or 0.0:.4f} s median latency")

            report = await client.ingest_many(
                "order", records, source="POS", init_data=True, on_progress=progress
            )
        landed = fake.accepted
    for failure in report.failures:
        print(f"{name}: record {failure.position + 1}: {failure.error}", file=sys.stderr)
    ids = {r.get("orderId") for r in landed}
    print(f"sent {len(records)} records from {name}; the fake accepted {len(landed)} "
          f"({len(ids)} distinct orderIds), {fake.auth_calls} auth call(s), "
          f"{fake.rate_limited} rate-limited, in {time.perf_counter() - started:.2f} s")
    print(f"report: {report.summary()}")
    return 0 if report.records_accepted == len(records) else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        path = Path(args[0])
        name, text = str(path), path.read_text(encoding="utf-8")
    else:
        name = "the sample orders.jsonl"
        text = files("pangocdp_async").joinpath("examples/orders.jsonl").read_text("utf-8")
    return asyncio.run(_demo(_read_jsonl(text, name), name))


if __name__ == "__main__":
    raise SystemExit(main())
