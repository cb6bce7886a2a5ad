"""The dry run: every record read and batched as a run would, with no network. ``validate``
lists what it finds; ``ingest --strict`` stops at the first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._batching import EntryEncoder
from .._bulk import KeyQueue
from ._inputs import BadRecord, ColumnType, InputFile, Reader, location, split_key

__all__ = ["DryRun"]


class DryRun:
    """Reads ``files`` into batches of ``batch_size`` through ``encoder``; :meth:`problems`
    yields each record that could not be sent, as ``file:line: reason``, as it is found."""

    def __init__(self, files: list[InputFile], encoder: EntryEncoder, batch_size: int, *,
                 column_types: dict[str, ColumnType] | None = None,
                 csv_delimiter: str = ",") -> None:
        self._keys = KeyQueue()
        self._encoder = encoder
        self._batch_size = batch_size
        self._files = files
        self.reader = Reader(files, keys=self._keys, column_types=column_types,
                             csv_delimiter=csv_delimiter)
        #: Records that would be sent, and the batches they would make.
        self.records = 0
        self.batches = 0

    def problems(self) -> Iterator[str]:
        iterator = iter(self.reader)
        chunk: list[Any] = []
        while True:
            chunk.clear()
            for record in iterator:
                chunk.append(record)
                if len(chunk) == self._batch_size:
                    break
            if not chunk:
                return
            batch, refused = self._encoder.encode_batch(chunk, 0, self._keys.take(len(chunk)))
            self.records += len(batch)
            self.batches += 1 if batch.entries else 0
            for key, record, error in refused:
                yield str(record) if isinstance(record, BadRecord) else self._describe(key, error)

    def _describe(self, key: int, error: Exception) -> str:
        index, line = split_key(key)
        spec = self._files[index]
        where = location(spec.name, line, item=spec.format == "json")
        return str(error).replace(f"entries[{key}]", where)
