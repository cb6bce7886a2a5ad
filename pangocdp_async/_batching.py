"""Records to encoded request bodies. Pure functions: no I/O, no clock.

The body is encoded once, with orjson, before any reservation or send. Entries are checked only
for what the client can know (a mapping, JSON-encodable, finite numbers); their fields belong to
the server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ._constants import MAX_ENTRIES_PER_REQUEST
from ._exceptions import RequestValidationError
from ._models import IngestEnvelope

__all__ = [
    "Batch",
    "EntryEncoder",
    "check_entries",
    "encode_body",
    "make_envelope",
    "prepare_entries",
    "prepare_entry",
]

# Python-facing argument names for the envelope fields, for error messages.
_ARGUMENT_NAMES = {
    "objectType": "object_type",
    "object_type": "object_type",
    "source": "source",
    "jeConfigId": "je_config_id",
    "je_config_id": "je_config_id",
    "jeEventKey": "je_event_key",
    "je_event_key": "je_event_key",
    "ignoredUpdateCfs": "ignored_update_cfs",
    "ignored_update_cfs": "ignored_update_cfs",
}
# Deep enough for any real record, shallow enough that a cycle is reported, not followed.
_MAX_DEPTH = 200


def make_envelope(
    object_type: object,
    source: object,
    *,
    je_config_id: object = None,
    je_event_key: object = None,
    ignored_update_cfs: object = None,
) -> IngestEnvelope:
    """Validate the envelope arguments once, or raise :class:`RequestValidationError`."""
    try:
        return IngestEnvelope.model_validate(
            {
                "object_type": object_type,
                "source": source,
                "je_config_id": je_config_id,
                "je_event_key": je_event_key,
                "ignored_update_cfs": ignored_update_cfs,
            },
            strict=True,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        name = _ARGUMENT_NAMES.get(str(loc[0]), str(loc[0])) if loc else "envelope"
        where = name + "".join(f"[{part}]" for part in loc[1:])
        raise RequestValidationError(
            f"{where}: {err['msg'].lower()} (got {_short_repr(err.get('input'))})", field=where
        ) from None


def prepare_entry(entry: object, index: int) -> dict[str, Any]:
    """One record as the dict orjson will encode, or a clear error naming its position."""
    if type(entry) is dict:
        return entry
    if isinstance(entry, BaseModel):
        return entry.model_dump(mode="python", by_alias=True)
    if isinstance(entry, Mapping):
        return dict(entry)
    raise RequestValidationError(
        f"entries[{index}]: an entry must be a mapping or a pydantic model, "
        f"got {type(entry).__name__}",
        index=index,
    )


def check_entries(entries: Iterable[object]) -> list[object]:
    """One request's entries as a list of 1 to 50 items, or a clear error."""
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
        raise RequestValidationError(
            f"entries must be a list of mappings, got {type(entries).__name__}", field="entries"
        )
    items = list(entries)
    if not 1 <= len(items) <= MAX_ENTRIES_PER_REQUEST:
        raise RequestValidationError(
            f"entries: one request takes 1 to {MAX_ENTRIES_PER_REQUEST} entries, "
            f"got {len(items)} (ingest_many() batches any number)",
            field="entries",
        )
    return items


def prepare_entries(entries: Iterable[object]) -> list[dict[str, Any]]:
    """Check the size of one request's entries and turn each into a dict."""
    return [prepare_entry(entry, i) for i, entry in enumerate(check_entries(entries))]


class EntryEncoder:
    """Encodes each entry once, and assembles request bodies from the encoded pieces.

    A body is ``prefix + b",".join(entries) + b"]}"``, so batches can be cut by count and by
    bytes, and split again after a 400, without encoding anything twice.
    """

    __slots__ = ("overhead", "prefix")

    def __init__(self, envelope: Mapping[str, Any]) -> None:
        head = orjson.dumps(dict(envelope))
        self.prefix = head[:-1] + (b',"entries":[' if len(head) > 2 else b'"entries":[')
        self.overhead = len(self.prefix) + 2

    def encode(self, record: object, position: int) -> bytes:
        """One record as JSON bytes, or :class:`RequestValidationError` naming ``position``."""
        entry = prepare_entry(record, position)
        try:
            data = orjson.dumps(entry)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise _explain_unencodable(entry, position, exc) from None
        # orjson writes NaN and +-Infinity as null without complaint. Walking every entry for
        # them would cost more than encoding; bytes without "null" cannot hide one.
        if b"null" in data:
            _reject_non_finite(entry, position)
        return data

    def body(self, parts: list[bytes]) -> bytes:
        return self.prefix + b",".join(parts) + b"]}"


@dataclass(slots=True)
class Batch:
    """Encoded entries bound for one request, with their positions in the caller's input."""

    positions: list[int] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes of the parts plus their separators

    def add(self, position: int, part: bytes) -> None:
        self.size += len(part) + (1 if self.parts else 0)
        self.positions.append(position)
        self.parts.append(part)

    def __len__(self) -> int:
        return len(self.parts)

    def split(self, at: int) -> tuple[Batch, Batch]:
        left, right = Batch(), Batch()
        for pos, part in zip(self.positions[:at], self.parts[:at], strict=True):
            left.add(pos, part)
        for pos, part in zip(self.positions[at:], self.parts[at:], strict=True):
            right.add(pos, part)
        return left, right

    def without(self, index: int) -> Batch:
        rest = Batch()
        for i, (pos, part) in enumerate(zip(self.positions, self.parts, strict=True)):
            if i != index:
                rest.add(pos, part)
        return rest


def encode_body(envelope: Mapping[str, Any], entries: list[dict[str, Any]], *,
                first_index: int = 0) -> bytes:
    """Encode one request body. ``first_index`` numbers entries in error messages."""
    encoder = EntryEncoder(envelope)
    return encoder.body([encoder.encode(e, first_index + i) for i, e in enumerate(entries)])


def _explain_unencodable(entry: Any, index: int, cause: Exception) -> RequestValidationError:
    path = _find_unencodable(entry, "", 0)
    if path is not None:
        field_path, reason = path
        return RequestValidationError(
            f"entries[{index}]{field_path}: {reason}",
            index=index,
            field=field_path.lstrip(".") or None,
        )
    return RequestValidationError(f"entries[{index}]: cannot be encoded as JSON: {cause}",
                                  index=index)


def _find_unencodable(value: object, path: str, depth: int) -> tuple[str, str] | None:
    if depth > _MAX_DEPTH:
        return path, f"nested more than {_MAX_DEPTH} levels deep (is there a cycle?)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", f"keys must be strings, got {type(key).__name__}"
            found = _find_unencodable(item, f"{path}.{key}", depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{j}]", depth + 1)
            if found is not None:
                return found
        return None
    try:
        orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return path, f"cannot be encoded as JSON ({exc}; got {_short_repr(value)})"
    return None


def _reject_non_finite(entry: Any, index: int) -> None:
    path = _find_non_finite(entry, "")
    if path is not None:
        raise RequestValidationError(
            f"entries[{index}]{path}: NaN and Infinity are not valid JSON "
            "(they would be sent as null)",
            index=index,
            field=path.lstrip("."),
        )


def _find_non_finite(value: object, path: str) -> str | None:
    if type(value) is float or isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_non_finite(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            found = _find_non_finite(item, f"{path}[{j}]")
            if found is not None:
                return found
    return None


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
