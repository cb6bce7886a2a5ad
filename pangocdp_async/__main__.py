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

from . import PangoCDPClient, RequestValidationError
from ._constants import MAX_ENTRIES_PER_REQUEST
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
            for first in range(0, len(records), MAX_ENTRIES_PER_REQUEST):
                batch = records[first : first + MAX_ENTRIES_PER_REQUEST]
                try:
                    result = await client.ingest("order", batch, source="POS", init_data=True)
                except RequestValidationError as exc:
                    # Name the input line, not only the position in the batch.
                    line = first + (exc.index or 0) + 1
                    print(f"{name}: record {line}: {exc}", file=sys.stderr)
                    return 1
                print(f"  request {first // MAX_ENTRIES_PER_REQUEST + 1}: "
                      f"{result.entries} entries -> HTTP {result.status} "
                      f"in {result.latency_s * 1000:.1f} ms (request id {result.request_id})")
        landed = fake.accepted
    ids = {r.get("orderId") for r in landed}
    print(f"sent {len(records)} records from {name}; the fake accepted {len(landed)} "
          f"({len(ids)} distinct orderIds), {fake.auth_calls} auth call(s), "
          f"{fake.rate_limited} rate-limited, in {time.perf_counter() - started:.2f} s")
    return 0 if len(landed) == len(records) else 1


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
