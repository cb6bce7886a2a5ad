"""Bad input is refused before any I/O, naming the entry and field; good input encodes once."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections import OrderedDict
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, Field

from pangocdp_async import RequestValidationError
from pangocdp_async._batching import check_entries, encode_body, make_envelope


def _encode(entries: list[Any]) -> bytes:
    env = make_envelope("order", "POS").wire_fields()
    return encode_body(env, check_entries(entries))


class Order(BaseModel):
    order_id: str = Field(alias="orderId")
    total: float
    at: dt.datetime


def test_envelope_wire_names_and_optional_fields() -> None:
    """The envelope uses the server's field names and leaves unset optional fields out."""
    env = make_envelope("order", "POS", je_config_id="je1", ignored_update_cfs=["customField01"])
    assert env.wire_fields() == {
        "objectType": "order", "source": "POS", "jeConfigId": "je1",
        "ignoredUpdateCfs": ["customField01"],
    }


def test_encoded_body_round_trips() -> None:
    """Mappings and pydantic models become the documented body, encoded once with orjson."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    body = orjson.loads(_encode([
        {"orderId": "1", "n": None},
        OrderedDict(orderId="2"),
        Order(orderId="3", total=9.5, at=when),
    ]))
    assert body == {
        "objectType": "order", "source": "POS",
        "entries": [{"orderId": "1", "n": None}, {"orderId": "2"},
                    {"orderId": "3", "total": 9.5, "at": "2026-01-02T03:04:05+00:00"}],
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"object_type": ""}, "object_type"),
        ({"object_type": None}, "object_type"),
        ({"object_type": 5}, "object_type"),
        ({"source": ""}, "source"),
        ({"source": None}, "source"),
        ({"ignored_update_cfs": "customField01"}, "ignored_update_cfs"),
        ({"ignored_update_cfs": ["ok", 3]}, "ignored_update_cfs[1]"),
        ({"je_config_id": 12}, "je_config_id"),
    ],
)
def test_bad_envelope(kwargs: dict[str, Any], field: str) -> None:
    """Missing or empty object_type/source and a non-list-of-str ignored_update_cfs are named."""
    args: dict[str, Any] = {"object_type": "order", "source": "POS", **kwargs}
    with pytest.raises(RequestValidationError) as info:
        make_envelope(args.pop("object_type"), args.pop("source"), **args)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize("count", [0, 51, 100])
def test_entry_count_outside_1_to_50(count: int) -> None:
    """A request takes 1 to 50 entries."""
    with pytest.raises(RequestValidationError, match=f"1 to 50 entries, got {count}"):
        check_entries([{"i": i} for i in range(count)])


@pytest.mark.parametrize("entries", ["abc", {"a": 1}, 42, None])
def test_entries_must_be_a_list(entries: Any) -> None:
    """A string, a single mapping or a scalar is not a list of entries."""
    with pytest.raises(RequestValidationError, match="entries must be a list"):
        check_entries(entries)


@pytest.mark.parametrize("bad", ["text", 3, ["a"], None, (1, 2)])
def test_entry_not_a_mapping(bad: Any) -> None:
    """An entry that is not a mapping or pydantic model is named by index."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"ok": 1}, {"ok": 2}, bad])
    assert info.value.index == 2
    assert str(info.value).startswith("entries[2]: an entry must be a mapping")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (math.nan, "price"),
        (math.inf, "price"),
        (-math.inf, "price"),
        ({"inner": [1.0, math.nan]}, "price.inner[1]"),
    ],
)
def test_nan_and_infinity_are_refused(value: Any, path: str) -> None:
    """NaN and Infinity (which orjson would send as null) are named by entry and field."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"price": 1.0}, {"n": None, "price": value}])
    assert (info.value.index, info.value.field) == (1, path)
    assert str(info.value).startswith(f"entries[1].{path}: NaN and Infinity")


def test_nan_inside_pydantic_model_is_refused() -> None:
    """A model's NaN float is caught too."""
    with pytest.raises(RequestValidationError, match=r"entries\[0\]\.total"):
        _encode([Order(orderId="1", total=math.nan, at=dt.datetime(2026, 1, 1))])


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        (decimal.Decimal("1.5"), "amount", "cannot be encoded"),
        (object(), "amount", "cannot be encoded"),
        (2**70, "amount", "cannot be encoded"),
        ({"x": {1: "a"}}, "amount.x[1]", "keys must be strings"),
        ({"x": [b"bytes"]}, "amount.x[0]", "cannot be encoded"),
    ],
)
def test_unencodable_values_are_named(value: Any, path: str, reason: str) -> None:
    """A value orjson cannot encode is named by entry index and dotted field path."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"a": 1}, {"a": 2}, {"a": 3, "amount": value}])
    assert info.value.index == 2
    assert str(info.value).startswith(f"entries[2].{path}: {reason}")


def test_cycle_is_reported_not_followed() -> None:
    """A self-referencing entry gives an error, not a crash."""
    entry: dict[str, Any] = {"a": 1}
    entry["self"] = entry
    with pytest.raises(RequestValidationError, match=r"entries\[0\]\.self"):
        _encode([entry])


def test_first_index_numbers_errors_in_a_larger_input() -> None:
    """Errors name the record's position in the whole input, not in its batch."""
    env = make_envelope("order", "POS").wire_fields()
    with pytest.raises(RequestValidationError, match=r"entries\[101\]\.v"):
        encode_body(env, [{"v": 1}, {"v": math.nan}], first_index=100)
