"""Bad input is refused before any I/O, naming the entry and field; good input encodes once."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
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


@pytest.mark.parametrize(
    ("key", "value", "field", "message"),
    [
        ("amount", decimal.Decimal("1.5"), "amount",
         "entries[2].amount: cannot be encoded as JSON "
         "(Type is not JSON serializable: decimal.Decimal; got Decimal('1.5'))"),
        ("amount", {"x": {1: "a"}}, "amount.x[1]",
         "entries[2].amount.x[1]: keys must be strings, got int"),
        ("Xtra.", [1, {"X": b"b"}], "Xtra.[1].X",
         "entries[2].Xtra.[1].X: cannot be encoded as JSON "
         "(Type is not JSON serializable: bytes; got b'b')"),
    ],
)
def test_unencodable_error_names_the_field_and_shows_the_value(
    key: str, value: Any, field: str, message: str
) -> None:
    """The error's ``field`` is the dotted path (no leading dot, nothing else stripped) and its
    message says why, showing the offending value."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"a": 1}, {"a": 2}, {"a": 3, key: value}])
    assert (info.value.index, info.value.field) == (2, field)
    assert str(info.value) == message


def test_unencodable_top_level_key_names_the_entry() -> None:
    """A key orjson refuses though it is a str (a str subclass): the entry is named, with
    orjson's reason, and no field."""

    class Key(str):
        pass

    with pytest.raises(RequestValidationError) as info:
        _encode([{"ok": 1}, {Key("k"): 1}])
    assert (info.value.index, info.value.field) == (1, None)
    assert str(info.value) == "entries[1]: cannot be encoded as JSON: Dict key must be str"


class _Unencodable:
    """A value orjson refuses, with a repr of a chosen length."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __repr__(self) -> str:
        return "r" * self.width


def _nested(container: str, levels: int, leaf: object) -> tuple[object, str]:
    """``leaf`` inside ``levels`` lists or dicts, and its path."""
    value = leaf
    for _ in range(levels):
        value = [value] if container == "list" else {"k": value}
    return value, ("[0]" if container == "list" else ".k") * levels


@pytest.mark.parametrize("container", ["list", "dict"])
@pytest.mark.parametrize(("levels", "reason"), [
    (199, "cannot be encoded as JSON (Type is not JSON serializable: _Unencodable; got rr)"),
    (200, "nested more than 200 levels deep (is there a cycle?)"),
])
def test_nesting_deeper_than_200_levels_is_reported(container: str, levels: int,
                                                    reason: str) -> None:
    """A bad value 200 levels down (the entry's field is level 1) is named with its own
    reason; one level deeper, the error says how deep it is nested."""
    value, path = _nested(container, levels, _Unencodable(2))
    with pytest.raises(RequestValidationError) as info:
        _encode([{"a": value}])
    assert str(info.value) == f"entries[0].a{path}: {reason}"


def test_cycle_through_a_list_is_reported_not_followed() -> None:
    """A list that contains itself gives an error naming the depth, not a crash."""
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(RequestValidationError, match=r"^entries\[0\]\.a\[1\]\[1\].*nested more"):
        _encode([{"a": loop}])


@pytest.mark.parametrize(("width", "shown"), [
    (1, "r"), (60, "r" * 60), (61, "r" * 57 + "..."), (200, "r" * 57 + "..."),
])
def test_unencodable_value_is_shown_up_to_60_characters(width: int, shown: str) -> None:
    """The offending value's repr is shown whole up to 60 characters, else cut to 60 with
    "..."."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"v": _Unencodable(width)}])
    assert str(info.value).endswith(f"; got {shown})")


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_nan_error_message_and_field(value: float) -> None:
    """The whole message of a NaN/Infinity refusal, and a field name starting with X kept."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"n": None, "Xprice.": [value]}])
    assert (info.value.index, info.value.field) == (0, "Xprice.[0]")
    assert str(info.value) == (
        "entries[0].Xprice.[0]: NaN and Infinity are not valid JSON (they would be sent as null)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"object_type": b"order"}, "object_type: input should be a valid string (got b'order')"),
        ({"source": ""}, "source: string should have at least 1 character (got '')"),
        ({"je_event_key": 7}, "je_event_key: input should be a valid string (got 7)"),
        ({"ignored_update_cfs": ("customField01",)},
         "ignored_update_cfs: input should be a valid list (got ('customField01',))"),
        ({"ignored_update_cfs": ["ok", 3]}, "ignored_update_cfs[1]: input should be a valid "
                                            "string (got 3)"),
        ({"object_type": "", "source": None},
         "object_type: string should have at least 1 character (got '')"),
    ],
)
def test_bad_envelope_message(kwargs: dict[str, Any], message: str) -> None:
    """The error names the argument (the first one wrong), says what is wrong and shows the
    value; near misses (bytes for str, a tuple for a list) are refused, not converted."""
    args: dict[str, Any] = {"object_type": "order", "source": "POS", **kwargs}
    with pytest.raises(RequestValidationError) as info:
        make_envelope(args.pop("object_type"), args.pop("source"), **args)
    assert str(info.value) == message
    assert info.value.field == message.partition(":")[0]


@pytest.mark.parametrize(("entries", "message"), [
    ("abc", "entries must be a list of mappings, got str"),
    ({"a": 1}, "entries must be a list of mappings, got dict"),
    (42, "entries must be a list of mappings, got int"),
    ([], "entries: one request takes 1 to 50 entries, got 0 (ingest_many() batches any number)"),
    ([{}] * 51,
     "entries: one request takes 1 to 50 entries, got 51 (ingest_many() batches any number)"),
])
def test_bad_entries_message(entries: Any, message: str) -> None:
    """The whole message, and the field it names."""
    with pytest.raises(RequestValidationError) as info:
        check_entries(entries)
    assert str(info.value) == message
    assert (info.value.field, info.value.index) == ("entries", None)


@pytest.mark.parametrize("count", [1, 50])
def test_one_to_50_entries_are_taken(count: int) -> None:
    """1 and 50 entries are a request; a generator is read into a list."""
    assert check_entries({"i": i} for i in range(count)) == [{"i": i} for i in range(count)]


class _Unreadable(Mapping[str, Any]):
    """A mapping whose items cannot be read."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise OSError("the file went away")

    def __len__(self) -> int:
        return 1


def test_a_mapping_that_cannot_be_read_is_named() -> None:
    """A mapping that raises when read is refused naming the entry and the cause."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"ok": 1}, _Unreadable()])
    assert str(info.value) == "entries[1]: could not be read as a mapping (OSError: the file " \
                              "went away)"
    assert info.value.index == 1
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("bad", [3, "x", None])
def test_entry_not_a_mapping_message(bad: Any) -> None:
    """The message names the entry's type."""
    with pytest.raises(RequestValidationError) as info:
        _encode([{"ok": 1}, bad])
    assert str(info.value) == (f"entries[1]: an entry must be a mapping or a pydantic model, "
                               f"got {type(bad).__name__}")
    assert info.value.index == 1
