"""Records -> encoded batches, cut by count and bytes. No I/O, no clock, no asyncio.

The run feeds records in; whole batches come out. A plain iterable cut by count only takes the
fast path (:meth:`Accumulator.take`: a whole batch read and encoded in one orjson call); any
other input goes record by record (:meth:`Accumulator.add`), so batches can also be cut by
bytes, lingered on, and flushed on demand. Refused records come back with their error; nothing
is dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from .._batching import Batch, EntryEncoder
from .._exceptions import RequestValidationError

__all__ = ["Accumulator", "KeyQueue", "Refused", "SourceFailed"]

#: A record the client refused before sending: (position, record, why).
Refused = tuple[int, Any, RequestValidationError]


class SourceFailed(Exception):
    """The records' iterable raised while a batch was being read; ``__cause__`` is its error
    and ``partial`` the batch read before it (to be reported, never dropped)."""

    def __init__(self, partial: Batch, refused: list[Refused]) -> None:
        super().__init__("the record source raised")
        self.partial = partial
        self.refused = refused


class KeyQueue:
    """Record keys, pushed by a source as it yields records and taken by the batch: a list and
    a read index (a batch takes its keys with one slice, not one call per record)."""

    __slots__ = ("_head", "_items", "append")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._head = 0
        #: Push one key (the list's own append: a source calls it once per record).
        self.append = self._items.append

    def __len__(self) -> int:
        return len(self._items) - self._head

    def take(self, n: int) -> list[int]:
        """The next ``n`` keys, oldest first."""
        head = self._head
        out = self._items[head:head + n]
        if len(out) != n:
            raise RuntimeError(f"the source pushed {len(out)} key(s) for {n} record(s)")
        head += n
        if head >= 4_096 and head * 2 >= len(self._items):
            del self._items[:head]  # (amortized: the list never holds much that was taken)
            head = 0
        self._head = head
        return out

    def take_one(self) -> int:
        return self.take(1)[0]


class Accumulator:
    """Cuts encoded records into batches of at most ``batch_size`` entries and, if set,
    ``max_bytes`` bytes of request body. ``read`` counts the records taken in.

    A record's position is its 0-based place in that order, unless ``keys`` is given: then the
    source pushes each record's key (any int, such as a file and line) onto ``keys`` (a
    :class:`KeyQueue`) before it yields the record, and the key is the record's position in
    batches and the report.
    """

    __slots__ = ("_batch_size", "_max_bytes", "encoder", "keys", "partial", "read")

    def __init__(self, encoder: EntryEncoder, batch_size: int, max_bytes: int | None,
                 keys: KeyQueue | None = None) -> None:
        if max_bytes is not None and max_bytes <= encoder.overhead:
            raise ValueError(
                f"max_batch_bytes must exceed the envelope's {encoder.overhead} bytes, "
                f"got {max_bytes}"
            )
        self.encoder = encoder
        self._batch_size = batch_size
        self._max_bytes = max_bytes
        self.partial = Batch()
        self.read = 0
        self.keys = keys

    def take(self, records: Iterator[Any]) -> tuple[Batch | None, list[Refused]]:
        """The next whole batch of a plain iterable (``None`` at its end), and the records
        of it that were refused. Raises :class:`SourceFailed` if the iterable raises."""
        first = self.read
        chunk: list[Any] = []
        try:
            # list.extend keeps what it took before the iterator raised: nothing read is lost.
            chunk.extend(itertools.islice(records, self._batch_size))
        except Exception as exc:
            self.read = first + len(chunk)
            partial, refused = self.encoder.encode_batch(chunk, first, self._keys_of(chunk))
            raise SourceFailed(partial, refused) from exc
        self.read = first + len(chunk)
        if not chunk:
            return None, []
        return self.encoder.encode_batch(chunk, first, self._keys_of(chunk))

    def _keys_of(self, chunk: list[Any]) -> list[int] | None:
        keys = self.keys
        return None if keys is None else keys.take(len(chunk))

    def _next_position(self) -> int:
        position = self.read if self.keys is None else self.keys.take_one()
        self.read += 1
        return position

    def encode(self, record: object) -> tuple[int, dict[str, Any], bytes]:
        """Take one record in: its position, the entry sent and its JSON bytes. Raises
        :class:`RequestValidationError` (naming the position and field) if it cannot be sent;
        the record still counts as read."""
        position = self._next_position()
        entry, part = self.encoder.encode_entry(record, position)
        self.check_size(position, part)
        return position, entry, part

    def take_encoded(self) -> int:
        """Take in a record a stream already encoded; return its position."""
        return self._next_position()

    def check_size(self, position: int, part: bytes) -> None:
        """Raise :class:`RequestValidationError` if one entry alone exceeds the byte limit."""
        limit = self._max_bytes
        if limit is not None and self.encoder.overhead + len(part) > limit:
            raise RequestValidationError(
                f"entries[{position}]: the entry alone is {len(part):,} bytes encoded, more "
                f"than max_batch_bytes={limit:,} allows",
                index=position,
            )

    def add(self, position: int, entry: dict[str, Any], part: bytes) -> list[Batch]:
        """Add an encoded entry; return the batches it completes (none, one, or two when the
        entry did not fit the bytes left and then filled a batch by itself)."""
        ready: list[Batch] = []
        partial = self.partial
        limit = self._max_bytes
        if (limit is not None and partial.entries
                and self.encoder.overhead + partial.size + 1 + len(part) > limit):
            ready.append(partial)
            partial = self.partial = Batch()
        partial.add(position, entry, part)
        if len(partial) >= self._batch_size:
            ready.append(partial)
            self.partial = Batch()
        return ready

    def drain(self) -> Batch | None:
        """The partial batch, if it holds anything (for linger, flush and the end)."""
        if not self.partial.entries:
            return None
        batch = self.partial
        self.partial = Batch()
        return batch
