"""Input files -> records, streamed: JSON Lines (``.gz`` too, ``-`` for stdin), CSV with a
header row, and JSON arrays (parsed incrementally by ijson, never loaded whole).

Every record gets a *key*: its file's index and its line (for a JSON array, its item number,
since a streaming parser sees no lines), packed in one int. Keys are what the journal stores,
so a resumed job skips what was settled without parsing it again. A record that cannot be read
is yielded as a :class:`BadRecord` (the run fails it; the caller reports ``file:line:
reason``); a file that cannot be opened is an :class:`InputError` before anything is sent.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import os
import stat as stat_module
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

import orjson

from .._bulk import KeyQueue
from ._ranges import merge

__all__ = [
    "FORMATS",
    "BadRecord",
    "ColumnType",
    "InputError",
    "InputFile",
    "KeySet",
    "Reader",
    "detect_format",
    "fingerprint",
    "key_of",
    "location",
    "split_key",
]

Format = Literal["jsonl", "csv", "json"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "json")
ColumnType = Literal["str", "int", "float", "bool", "json"]

_LINE_BITS = 40  # up to 2**40 lines a file, 2**23 files
_LINE_MASK = (1 << _LINE_BITS) - 1
_FINGERPRINT_BYTES = 1 << 20
_CSV_FIELD_LIMIT = 64 << 20  # (the csv module's default, 128 KiB, refuses real fields)


def key_of(file_index: int, line: int) -> int:
    return (file_index << _LINE_BITS) | line


def split_key(key: int) -> tuple[int, int]:
    return key >> _LINE_BITS, key & _LINE_MASK


class InputError(Exception):
    """An input that cannot be read at all (missing, unreadable, unknown format)."""


def location(file: str, line: int, *, item: bool = False) -> str:
    """``orders.jsonl:12``, or ``orders.json:item 12`` for a JSON array's item."""
    return f"{file}:item {line}" if item else f"{file}:{line}"


class BadRecord:
    """A line that is not a record: yielded in its place so that it is failed, counted and
    journaled like any refused record. ``raw`` holds the line's text (at most 1,000
    characters) for the dead letter; ``item`` says ``line`` is a JSON array's item number."""

    __slots__ = ("file", "item", "line", "raw", "reason")

    def __init__(self, file: str, line: int, reason: str, raw: str | None = None, *,
                 item: bool = False) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        self.raw = raw
        self.item = item

    def __str__(self) -> str:
        return f"{location(self.file, self.line, item=self.item)}: {self.reason}"

    def __repr__(self) -> str:
        return f"BadRecord({str(self)!r})"


@dataclass(frozen=True, slots=True)
class InputFile:
    index: int
    path: str  # as given; "-" is stdin
    format: Format
    gzip: bool

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == "-" else self.path


def detect_format(path: str, override: str | None) -> tuple[Format, bool]:
    """The format (from ``override`` or the extension) and whether the file is gzip."""
    lower = path.lower()
    compressed = lower.endswith(".gz")
    if compressed:
        lower = lower[:-3]
    if override is not None:
        return override, compressed  # type: ignore[return-value]
    if path == "-":
        return "jsonl", False
    for suffixes, fmt in (((".jsonl", ".ndjson"), "jsonl"), ((".csv",), "csv"),
                          ((".json",), "json")):
        if lower.endswith(suffixes):
            return fmt, compressed  # type: ignore[return-value]
    raise InputError(f"{path}: cannot tell the format from the extension (use .jsonl, .ndjson, "
                     ".csv or .json, optionally .gz), or pass --format")


def is_stream(path: str) -> bool:
    """Whether ``path`` can be read only once (stdin, a pipe, a process substitution): it has
    no fingerprint and no line count, and ``--strict`` cannot read it twice."""
    if path == "-":
        return True
    try:
        return not stat_module.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode): one file under two names (a link) has one identity."""
    try:
        st = os.fstat(0) if path == "-" else os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def fingerprint(path: str) -> dict[str, Any] | None:
    """Size, modification time and a hash of the first and last MiB: enough to notice a file
    replaced, appended to or rewritten (a stream has none: reading it would consume it)."""
    if is_stream(path):
        return None
    p = Path(path)
    stat = p.stat()
    digest = hashlib.sha256()
    with p.open("rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if stat.st_size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, stat.st_size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))
    return {"path": str(p.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256_ends": digest.hexdigest()}


class KeySet:
    """Sorted, merged ranges of keys, asked in increasing order (a cursor, so each question is
    O(1) on average)."""

    __slots__ = ("_his", "_i", "_los", "last")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        merged = merge(ranges)
        self._los = [r[0] for r in merged]
        self._his = [r[1] for r in merged]
        self._i = 0
        #: The highest key in the set (-1 if empty): keys above it need no question.
        self.last = merged[-1][1] if merged else -1

    def __len__(self) -> int:
        return len(self._los)

    def __contains__(self, key: int) -> bool:
        his, i = self._his, self._i
        while i < len(his) and his[i] < key:
            i += 1
        self._i = i
        return i < len(his) and self._los[i] <= key


def _open_binary(spec: InputFile) -> IO[bytes]:
    try:
        if spec.path == "-":
            if spec.gzip:
                return cast(IO[bytes], gzip.GzipFile(fileobj=sys.stdin.buffer, mode="rb"))
            return sys.stdin.buffer
        if spec.gzip:
            return cast(IO[bytes], gzip.open(spec.path, "rb"))
        return Path(spec.path).open("rb")
    except OSError as exc:
        raise InputError(f"{spec.path}: cannot read: {exc.strerror or exc}") from None


def check_readable(spec: InputFile) -> None:
    """Raise :class:`InputError` now if the file cannot be opened (before anything is sent)."""
    if spec.path == "-":
        return
    p = Path(spec.path)
    if p.is_dir():
        raise InputError(f"{spec.path}: is a directory, not a file")
    if not p.exists():
        raise InputError(f"{spec.path}: no such file")
    if is_stream(spec.path):  # (opening a pipe to check it would take its writer's data)
        if not os.access(p, os.R_OK):
            raise InputError(f"{spec.path}: cannot read: Permission denied")
        return
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"{spec.path}: cannot read: {exc.strerror or exc}") from None


def _clip(text: str, limit: int = 1_000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stream_error(exc: BaseException) -> str | None:
    """A reason for an error of the byte stream itself (gzip, I/O), or None."""
    if isinstance(exc, EOFError):
        return "the compressed file is truncated (it ends before the end-of-stream marker)"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"the compressed data is corrupt ({exc})"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return None


class Reader:
    """Yields the records of ``files`` in order; before each, its key is appended to ``keys``
    (when given). Keys in ``skip`` are passed over without being parsed. ``stats`` counts lines
    per outcome as they go."""

    def __init__(self, files: list[InputFile], *, keys: KeyQueue | None = None,
                 skip: KeySet | None = None,
                 column_types: dict[str, ColumnType] | None = None,
                 csv_delimiter: str = ",") -> None:
        self.files = files
        self.keys = keys
        self.skip = skip if skip is not None else KeySet([])
        self.column_types = column_types or {}
        self.csv_delimiter = csv_delimiter
        #: Records yielded, records skipped as settled, and whether every file was read whole.
        self.yielded = 0
        self.skipped = 0
        self.complete = False
        #: Files with no record at all (reported, not failed).
        self.empty_files: list[str] = []
        #: Inputs that could not be read to their end (``file:line: reason``): the records
        #: after that point were not read, so the job cannot be complete.
        self.broken: list[str] = []

    def __iter__(self) -> Iterator[Any]:
        for spec in self.files:
            before = self.yielded + self.skipped
            stream = _open_binary(spec)
            try:
                if spec.format == "jsonl":
                    yield from self._jsonl(spec, stream)
                elif spec.format == "csv":
                    yield from self._csv(spec, stream)
                else:
                    yield from self._json(spec, stream)
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
            if self.yielded + self.skipped == before:
                self.empty_files.append(spec.name)
        self.complete = True

    def _emit(self, key: int, record: Any) -> Any:
        if self.keys is not None:
            self.keys.append(key)
        self.yielded += 1
        return record

    # --- JSON Lines ----------------------------------------------------------------------------
    def _jsonl(self, spec: InputFile, stream: IO[bytes]) -> Iterator[Any]:
        # The hot loop of a backfill: locals only, one dict check, no call per line but loads
        # and the key's push. A key is the file's base plus the line number.
        base = spec.index << _LINE_BITS
        skip = self.skip
        skip_until = skip.last
        push = self.keys.append if self.keys is not None else _no_push
        loads = orjson.loads
        name = spec.name
        key = base
        good = 0
        try:
            for key, line in enumerate(stream, base + 1):
                if key <= skip_until and key in skip:
                    if line.strip():
                        self.skipped += 1
                    continue
                try:
                    record = loads(line)
                except orjson.JSONDecodeError as exc:
                    if not line.strip():
                        continue  # a blank line is not a record
                    if key == base + 1 and line.startswith(codecs.BOM_UTF8):
                        try:
                            record = loads(line[3:])
                        except orjson.JSONDecodeError:
                            pass
                        else:
                            if type(record) is dict:
                                good += 1
                                push(key)
                                yield record
                                continue
                    yield self._emit(key, BadRecord(name, key - base,
                                                    _json_reason(line, exc),
                                                    _clip(_text(line))))
                    continue
                if type(record) is dict:
                    good += 1
                    push(key)
                    yield record
                    continue
                yield self._emit(key, BadRecord(
                    name, key - base,
                    f"a record must be a JSON object, got {_json_kind(record)}",
                    _clip(_text(line))))
        except Exception as exc:
            reason = _stream_error(exc)
            if reason is None:
                raise
            key += 1  # the line the stream broke on
            self.broken.append(f"{location(name, key - base)}: {reason}")
            if key in skip:
                self.skipped += 1
            else:
                yield self._emit(key, BadRecord(name, key - base, reason))
        finally:
            self.yielded += good

    # --- CSV -----------------------------------------------------------------------------------
    def _csv(self, spec: InputFile, stream: IO[bytes]) -> Iterator[Any]:
        base = spec.index << _LINE_BITS
        name = spec.name
        decoder = _LineDecoder(stream)
        csv.field_size_limit(_CSV_FIELD_LIMIT)
        reader = csv.reader(decoder, delimiter=self.csv_delimiter, strict=True)
        types = self.column_types
        try:
            header = next(reader)
        except StopIteration:
            return
        except Exception as exc:
            yield from self._csv_error(spec, exc, decoder, 1)
            return
        if decoder.bad_line is not None:
            yield self._emit(base | 1, BadRecord(name, 1, _NOT_UTF8 + " (in the header row)"))
            return
        unknown = sorted(set(types) - set(header))
        if unknown:
            raise InputError(f"{name}: --column names {', '.join(unknown)}, not in the header "
                             f"row ({', '.join(header)})")
        width = len(header)
        converters = [(i, column, _CONVERTERS[types[column]])
                      for i, column in enumerate(header) if column in types]
        skip = self.skip
        while True:
            start = decoder.line + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # one bad row (an unbalanced quote): the next row is read
                if decoder.line > start:
                    # (an opening quote never closed took the lines after it into the row)
                    self.broken.append(
                        f"{location(name, start)}: a quoted field opened here runs to line "
                        f"{decoder.line}: the rows in between were not read")
                if (base | start) in skip:
                    self.skipped += 1
                else:
                    yield self._emit(base | start,
                                     BadRecord(name, start, f"not valid CSV ({exc})"))
                decoder.bad_line = None
                continue
            except Exception as exc:
                yield from self._csv_error(spec, exc, decoder, start)
                return
            key = base | start
            if key in skip:
                if row:
                    self.skipped += 1
                decoder.bad_line = None
                continue
            if not row:
                continue  # a blank line
            if decoder.bad_line is not None:
                decoder.bad_line = None
                yield self._emit(key, BadRecord(name, start, _NOT_UTF8))
                continue
            if len(row) != width:
                yield self._emit(key, BadRecord(
                    name, start, f"expected {width} columns (as in the header row), got "
                    f"{len(row)}", _clip(self.csv_delimiter.join(row))))
                continue
            record: dict[str, Any] = dict(zip(header, row, strict=True))
            problem = None
            for i, column, convert in converters:
                try:
                    record[column] = convert(row[i])
                except ValueError as exc:
                    problem = f"column {column!r}: {exc}"
                    break
            if problem is not None:
                yield self._emit(key, BadRecord(name, start, problem,
                                                _clip(self.csv_delimiter.join(row))))
                continue
            yield self._emit(key, record)

    def _csv_error(self, spec: InputFile, exc: Exception, decoder: _LineDecoder,
                   start: int) -> Iterator[Any]:
        reason = _stream_error(exc)
        if reason is None:
            if not isinstance(exc, csv.Error):
                raise exc
            reason = f"not valid CSV ({exc})"
        self.broken.append(f"{location(spec.name, start)}: {reason}")
        key = (spec.index << _LINE_BITS) | start
        if key in self.skip:
            self.skipped += 1
            return
        yield self._emit(key, BadRecord(spec.name, start, reason))

    # --- JSON array ----------------------------------------------------------------------------
    def _json(self, spec: InputFile, stream: IO[bytes]) -> Iterator[Any]:
        import ijson  # (imported here: only JSON arrays need it)

        base = spec.index << _LINE_BITS
        name = spec.name
        skip = self.skip
        item = 0
        peek = getattr(stream, "peek", None)
        if peek is not None:
            if peek(3)[:3] == codecs.BOM_UTF8:
                stream.read(3)
            while peek(1)[:1] in (b" ", b"\t", b"\r", b"\n"):
                stream.read(1)
            first = peek(1)[:1]
            if first and first != b"[":
                kind = "an object" if first == b"{" else "something else"
                not_array = f"a JSON input must be an array of objects, got {kind}"
                self.broken.append(f"{location(name, 1, item=True)}: {not_array}")
                if (base | 1) not in skip:
                    yield self._emit(base | 1, BadRecord(name, 1, not_array, item=True))
                return
        try:
            for value in ijson.items(stream, "item", use_float=True):
                item += 1
                key = base | item
                if key in skip:
                    self.skipped += 1
                    continue
                if type(value) is not dict:
                    yield self._emit(key, BadRecord(
                        name, item, f"a record must be a JSON object, got {_json_kind(value)}",
                        item=True))
                    continue
                yield self._emit(key, value)
        except Exception as exc:
            reason = _stream_error(exc)
            if reason is None:
                if not isinstance(exc, (ijson.JSONError, ijson.IncompleteJSONError,
                                        UnicodeDecodeError)):
                    raise
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                reason = f"not a valid JSON array after item {item} ({text})"
            self.broken.append(f"{location(name, item + 1, item=True)}: {reason}")
            key = base | (item + 1)
            if key in skip:
                self.skipped += 1
                return
            yield self._emit(key, BadRecord(name, item + 1, reason, item=True))
            return


_NOT_UTF8 = "bytes that are not UTF-8"


class _LineDecoder:
    """Bytes lines -> text lines for the csv module, counting lines and noting the first line
    that is not UTF-8 (decoded with replacement so that the row can still be cut)."""

    __slots__ = ("_lines", "bad_line", "line")

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines = iter(stream)
        self.line = 0
        self.bad_line: int | None = None

    def __iter__(self) -> _LineDecoder:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.line += 1
        if self.line == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.bad_line is None:
                self.bad_line = self.line
            return raw.decode("utf-8", "replace")


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no)")


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _to_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r}: NaN and Infinity are not valid JSON")
    return value


def _to_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _typed(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def run(text: str) -> Any:
        return None if text == "" else convert(text)

    return run


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": _typed(_to_int),
    "float": _typed(_to_float),
    "bool": _typed(_to_bool),
    "json": _typed(_to_json),
}


def _no_push(key: int) -> None:
    return None


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip()


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _json_reason(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{_NOT_UTF8} (at byte {bad.start + 1})"
    for word in (b"NaN", b"Infinity"):
        if word in line:
            return f"not valid JSON: {word.decode()} is not a JSON number ({exc})"
    return f"not valid JSON ({exc})"


def count_lines(spec: InputFile) -> int | None:
    """Lines in a plain file, fast (for the progress bar's total); None when unknown (stdin,
    gzip, JSON arrays)."""
    if spec.gzip or spec.format == "json" or is_stream(spec.path):
        return None
    count = 0
    last = b"\n"
    with Path(spec.path).open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        count += 1
    return count - (1 if spec.format == "csv" and count else 0)

