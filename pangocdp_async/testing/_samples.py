"""Realistic ``order`` records for demos, tests and benchmarks, built from the entity notes of
the contract (orderId, orderStatus, customerId, customerName, customerEmail, items with
productSku and productName; epoch-millisecond dates with timezoneGmt). Deterministic by seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["sample_orders", "write_jsonl"]

_FIRST = ["Bao", "Linh", "Minh", "Anh", "Huy", "Mai", "Nam", "Thu", "Quang", "Lan", "Duc", "Hoa",
          "Tuan", "Ngoc", "Phuong", "Khanh", "Trang", "Son", "Vy", "Long"]
_LAST = ["Tran", "Nguyen", "Le", "Pham", "Hoang", "Vu", "Dang", "Bui", "Do", "Ho", "Ngo",
         "Duong", "Ly"]
_PRODUCTS = [("SKU-100", "Espresso beans 1kg", 18.5), ("SKU-101", "Filter coffee 500g", 9.0),
             ("SKU-205", "Green tea 100 bags", 6.2), ("SKU-310", "Ceramic mug", 12.0),
             ("SKU-311", "Travel tumbler", 21.0), ("SKU-420", "Hand grinder", 45.0),
             ("SKU-421", "Pour-over kettle", 38.0), ("SKU-500", "Oat milk 1l", 2.4),
             ("SKU-501", "Cold brew bottle", 15.5), ("SKU-640", "Barista apron", 24.0)]
_STATUSES = ["NEW", "PAID", "PAID", "SHIPPED", "SHIPPED", "DELIVERED", "DELIVERED", "CANCELLED"]
_CHANNELS = ["POS", "WEB", "APP"]
_STORES = ["HCM-01", "HCM-02", "HN-01", "DN-01"]
_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def sample_orders(n: int, *, seed: int = 7, prefix: str = "ORD") -> Iterator[dict[str, Any]]:
    """``n`` orders with 1 to 4 items each, ids ``<prefix>-0000001`` upward."""
    rng = random.Random(seed)
    for i in range(1, n + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        customer = rng.randrange(1, 5_000)
        items: list[dict[str, Any]] = []
        for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
            sku, name, price = rng.choice(_PRODUCTS)
            items.append({"productSku": sku, "productName": name,
                          "quantity": rng.randint(1, 4), "price": price})
        yield {
            "orderId": f"{prefix}-{i:07d}",
            "orderStatus": rng.choice(_STATUSES),
            "customerId": f"CUS-{customer:05d}",
            "customerName": f"{first} {last}",
            "customerEmail": f"{first.lower()}.{last.lower()}{customer}@example.com",
            "createdDate": _START_MS + i * 60_000 + rng.randrange(60_000),
            "timezoneGmt": "+07:00",
            "recordStatus": "Active",
            "channel": rng.choice(_CHANNELS),
            "storeCode": rng.choice(_STORES),
            "totalAmount": round(sum(it["quantity"] * it["price"] for it in items), 2),
            "currency": "USD",
            "items": items,
        }


def write_jsonl(path: str | Path, records: Iterator[dict[str, Any]]) -> int:
    """Write records as JSON Lines; return how many."""
    count = 0
    with Path(path).open("wb") as f:
        for record in records:
            f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    return count
