"""The job journal: one SQLite file (WAL) that makes a backfill resumable.

It holds the job's settings and its inputs' fingerprints, which records were settled (ranges of
keys, accepted or failed), the failures with their errors, the batches whose first request was
sent and that are not finished, and the runs. The quota scheduler's state lives in the same
file (table ``quota_state``), so a resumed job also resumes its pacing.

Writes are ordered so that a ``kill -9`` at any moment loses nothing:

- before a batch's first request leaves, its range of keys is written to its sender's row of
  ``sent`` and committed (one row per sender, overwritten by its next batch: no deletes);
- when its sender is done with it, its accepted ranges go to ``done`` with the sender's next
  dispatch (the same statement, by a trigger) or when the event loop turns, whichever comes
  first: one commit per batch, shared when several finish in one turn.

A batch is thus *in flight* from the moment its first request is handed to the transport until
its outcome is committed, and each sender has at most one in flight. After a crash, every
record is either settled in ``done`` or read again; the ones in ``sent`` and not settled were
in flight and may arrive twice: the resumed run says how many. WAL with ``synchronous=NORMAL``
makes each commit one ``write`` (no fsync): safe against the process dying, which is what a
journal of a client must survive; a power cut may lose the last commits (those records are
sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from .._batching import Batch
from .._bulk._sender import reason_of
from .._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    PangoCDPError,
    RequestValidationError,
)
from .._results import IngestReport, RecordFailure
from ._inputs import BadRecord, InputFile, location, split_key
from ._ranges import batch_runs, count, merge, subtract

__all__ = [
    "OUTAGE_BATCHES",
    "JobMismatch",
    "Journal",
    "JournalWriteError",
    "ServerFailing",
    "Settled",
]

logger = logging.getLogger("pangocdp_async.cli")

SCHEMA = 1
_LEFTOVER_SLOT = 1 << 40  # the row of what earlier runs left unconfirmed (senders use 0...)
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS done (lo INTEGER NOT NULL, hi INTEGER NOT NULL,
                                 outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sent (slot INTEGER PRIMARY KEY, lo INTEGER, hi INTEGER,
                                 ranges BLOB, ack_lo INTEGER, ack_hi INTEGER);
-- A sender's next dispatch carries its last batch's acknowledgment into "done": one statement.
CREATE TRIGGER IF NOT EXISTS sent_carries_ack AFTER INSERT ON sent
    WHEN NEW.ack_lo IS NOT NULL
    BEGIN INSERT INTO done (lo, hi, outcome) VALUES (NEW.ack_lo, NEW.ack_hi, 'a'); END;
CREATE TABLE IF NOT EXISTS failures (key INTEGER PRIMARY KEY, file TEXT NOT NULL,
                                     line INTEGER NOT NULL, kind TEXT NOT NULL,
                                     status INTEGER, message TEXT NOT NULL, record BLOB,
                                     run INTEGER NOT NULL, retry INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started_at REAL NOT NULL,
                                 ended_at REAL, outcome TEXT, summary BLOB);
"""


class JobMismatch(Exception):
    """The journal belongs to another job (other settings, or inputs that changed)."""


#: Batches failed in a row, with nothing accepted between, for reasons other than their
#: records, before a run stops (see :meth:`Journal.failed`).
OUTAGE_BATCHES = 5


class JournalWriteError(Exception):
    """The journal could not be written (disk full, file gone): the run stops, since what it
    sent could not be recorded."""


class ServerFailing(Exception):
    """Batch after batch fails for reasons other than its records: the run stops."""


@dataclass(frozen=True, slots=True)
class Settled:
    """What the journal knows of a job."""

    accepted: int
    failed: int
    #: Records sent by a run that stopped before their answer was written (in flight at a kill,
    #: or in doubt): they are sent again, and may arrive twice.
    unconfirmed: int
    runs: int
    total: int | None  # records in the inputs, once a run has read them all
    #: Records that failed for a reason other than the record itself (an outage, refused
    #: credentials): not settled, sent again by the next run.
    to_retry: int = 0


class Journal:
    """One job's journal. Implements the run's journal hooks (``dispatched``, ``accepted``,
    ``failed``, ``finished``); ``dead_letter`` (an open file) receives each failure too."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise JobMismatch(f"cannot create the journal {self.path}: the directory "
                              f"{self.path.parent} does not exist")
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           isolation_level=None)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None)
            tables = {name for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if existed and tables and not _is_journal(self._db, tables):
                self._db.close()
                raise JobMismatch(f"{self.path} is not a pangocdp job journal (a SQLite file "
                                  "with other tables: it is left as it is)")
            if not read_only:
                # (small pages: a commit writes two of them; only a new file takes it)
                self._db.execute("PRAGMA page_size=1024")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA_SQL)
            version = self._meta("schema")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(AttributeError):
                self._db.close()
            raise JobMismatch(f"{self.path} is not a pangocdp job journal ({exc})") from None
        if version is None and not read_only:
            self._set_meta("schema", SCHEMA)
        elif version is not None and version != SCHEMA:
            self._db.close()
            raise JobMismatch(f"{self.path} was written by another version of pangocdp "
                              f"(journal schema {version}, this one reads {SCHEMA})")
        self._names: list[str] = self._meta("names") or []
        self._json_files: set[int] = set(self._meta("json_files") or [])  # lines are items
        self._pending: list[tuple[int, int]] = []  # accepted ranges not yet written
        self._run = 0
        self._commit_handle: asyncio.Handle | None = None
        self._outage = 0  # batches failed in a row for reasons other than their records
        self._acks: dict[int, tuple[int, int]] = {}  # sender -> its last batch's ack, held
        self._sender_of: dict[int, int] = {}  # id(batch) -> its sender, until it is finished
        self.dead_letter: IO[bytes] | None = None
        #: Set when a write failed: the run must stop (it could not be resumed safely).
        self.error: BaseException | None = None

    # --- meta ----------------------------------------------------------------------------------
    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET value = excluded.value", (key, orjson.dumps(value)))

    @property
    def settings(self) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._meta("settings")
        return value

    @property
    def inputs(self) -> list[dict[str, Any]] | None:
        value: list[dict[str, Any]] | None = self._meta("inputs")
        return value

    def bind(self, settings: dict[str, Any], inputs: list[dict[str, Any]],
             files: list[InputFile], *, restart: bool) -> bool:
        """Make this the journal of the job (``settings``, ``inputs``). Returns True if it
        resumes a job, False if it starts one. Raises :class:`JobMismatch` if the journal holds
        another job, unless ``restart`` (then what it held is forgotten; the quota state
        stays, since it belongs to the account, not the job)."""
        self._names = [f.name for f in files]
        self._json_files = {f.index for f in files if f.format == "json"}
        known = self.settings
        if known is not None and not restart:
            problems = _differences(known, settings, self.inputs or [], inputs)
            if problems:
                raise JobMismatch(
                    f"the journal {self.path} holds another job: " + "; ".join(problems)
                    + ". Pass --restart to start it over (what it holds is forgotten), or "
                    "choose another --job file")
            for was, now in zip(self.inputs or [], inputs, strict=True):
                if was.get("mtime_ns") != now.get("mtime_ns"):
                    logger.warning("%s was modified since the job started, but its size and "
                                   "its first and last MiB are the same: resuming",
                                   now.get("path"))
            self._set_meta("inputs", inputs)
            self._set_meta("names", self._names)
            self._set_meta("json_files", sorted(self._json_files))
            return self._count_done() > 0 or self._db.execute(
                "SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        with self._db:
            self._db.execute("BEGIN")
            for table in ("done", "sent", "failures", "runs"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 -- fixed names
            self._db.execute("DELETE FROM meta WHERE key != 'schema'")
            self._set_meta("settings", settings)
            self._set_meta("inputs", inputs)
            self._set_meta("names", self._names)
            self._set_meta("json_files", sorted(self._json_files))
        return False

    def _count_done(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM done").fetchone()[0])

    # --- what is settled -----------------------------------------------------------------------
    def settled_ranges(self) -> list[tuple[int, int]]:
        """Merged ranges of every key accepted or failed."""
        return merge(self._db.execute("SELECT lo, hi FROM done"))

    def unconfirmed_ranges(self) -> list[tuple[int, int]]:
        """Keys sent by a run that stopped before their answer was written, not settled."""
        ranges: list[tuple[int, int]] = []
        for lo, hi, blob in self._db.execute("SELECT lo, hi, ranges FROM sent"):
            if blob is None:
                ranges.append((lo, hi))
            else:
                ranges.extend((a, b) for a, b in orjson.loads(blob))
        return subtract(merge(ranges), self.settled_ranges())

    def state(self) -> Settled:
        accepted = failed = 0
        for lo, hi, outcome in self._db.execute("SELECT lo, hi, outcome FROM done"):
            if outcome == "a":
                accepted += hi - lo + 1
            else:
                failed += hi - lo + 1
        runs = int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        total = self._meta("total")
        retry = int(self._db.execute(
            "SELECT COUNT(*) FROM failures WHERE retry = 1").fetchone()[0])
        return Settled(accepted, failed, count(self.unconfirmed_ranges()), runs,
                       None if total is None else int(total), retry)

    def set_total(self, total: int) -> None:
        self._set_meta("total", total)

    def failures(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = ("SELECT key, file, line, kind, status, message, record, retry FROM failures "
                 "ORDER BY key")
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        out = []
        for key, file, line, kind, status, message, record, retry in self._db.execute(query):
            item = split_key(key)[0] in self._json_files
            out.append({"file": file, "line": line, "item": item,
                        "where": location(file, line, item=item), "error": kind,
                        "status": status,
                        "message": message, "sent_again_on_resume": bool(retry),
                        "record": None if record is None else orjson.loads(record)})
        return out

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for rid, started, ended, outcome, summary in self._db.execute(
                "SELECT id, started_at, ended_at, outcome, summary FROM runs ORDER BY id"):
            out.append({"run": rid, "started_at": started, "ended_at": ended,
                        "outcome": outcome or "interrupted (killed)",
                        "summary": None if summary is None else orjson.loads(summary)})
        return out

    # --- a run ---------------------------------------------------------------------------------
    def begin_run(self) -> None:
        """Start a run: what earlier runs left unconfirmed moves to one row of ``sent``, out of
        the senders' rows (which this run's senders overwrite)."""
        leftover = self.unconfirmed_ranges()
        with self._db:
            self._db.execute("BEGIN")
            self._replace_sent(leftover)
            # (failures that do not settle their record are tried again by this run)
            self._db.execute("DELETE FROM failures WHERE retry = 1")
            cur = self._db.execute("INSERT INTO runs (started_at) VALUES (?)", (time.time(),))
        self._run = int(cur.lastrowid or 0)
        self._acks.clear()
        self._sender_of.clear()

    def _replace_sent(self, ranges: list[tuple[int, int]]) -> None:
        self._db.execute("DELETE FROM sent")
        if ranges:
            self._db.execute("INSERT INTO sent (slot, ranges) VALUES (?, ?)",
                             (_LEFTOVER_SLOT, orjson.dumps(ranges)))

    def save_summary(self, summary: dict[str, Any]) -> None:
        """Keep the run's summary with its row (for ``status``)."""
        self._db.execute("UPDATE runs SET summary = ? WHERE id = ?",
                         (orjson.dumps(summary), self._run))

    def end_run(self, report: IngestReport, outcome: str) -> None:
        """Write what is pending; keep as unconfirmed this run's records in doubt and what
        earlier runs left unconfirmed and is still not settled (this run's report says
        exactly which of its own records may have arrived: the senders' rows are dropped);
        close the run's row."""
        self.commit()
        settled = self.settled_ranges()
        earlier: list[tuple[int, int]] = []
        for (blob,) in self._db.execute("SELECT ranges FROM sent WHERE slot = ?",
                                        (_LEFTOVER_SLOT,)):
            earlier.extend((a, b) for a, b in orjson.loads(blob))
        doubt = [(r.position, r.position) for r in report.in_doubt]
        keep = subtract(merge([*earlier, *doubt]), settled)
        with self._db:
            self._db.execute("BEGIN")
            self._replace_sent(keep)
            self._db.execute("UPDATE runs SET ended_at = ?, outcome = ? WHERE id = ?",
                             (time.time(), outcome, self._run))

    # The run's journal hooks (see the module's docstring for the order of writes). A failing
    # write must not be swallowed: it is kept in ``error`` and raised (now or at the next
    # dispatch), which crashes a sender and so stops the run.
    def dispatched(self, batch: Batch, sender: int) -> None:
        if self.error is not None:
            raise self._write_error()
        positions = batch.positions
        lo, hi = positions[0], positions[-1]
        ack_lo, ack_hi = self._acks.pop(sender, (None, None))
        db = self._db
        try:
            # One statement: this batch into the sender's row, and (by the trigger) the
            # sender's last acknowledgment into "done". Outside a transaction it commits itself;
            # inside one, the commit below takes what other senders wrote since with it.
            if hi - lo == len(positions) - 1:  # one range: the usual batch
                db.execute("INSERT OR REPLACE INTO sent (slot, lo, hi, ranges, ack_lo, ack_hi) "
                           "VALUES (?, ?, ?, NULL, ?, ?)", (sender, lo, hi, ack_lo, ack_hi))
            else:
                db.execute("INSERT OR REPLACE INTO sent (slot, lo, hi, ranges, ack_lo, ack_hi) "
                           "VALUES (?, NULL, NULL, ?, ?, ?)",
                           (sender, orjson.dumps(batch_runs(positions)), ack_lo, ack_hi))
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.error = exc
            raise self._write_error() from exc
        self._sender_of[id(batch)] = sender

    def accepted(self, positions: list[int]) -> None:
        self._pending.extend(batch_runs(positions))
        self._outage = 0

    def finished(self, batch: Batch) -> None:
        """The acknowledged ranges become durable with the sender's next dispatch or when the
        loop turns, whichever comes first (every batch finished in a turn shares the commit).
        The usual case, one range, rides with the next dispatch's own statement."""
        sender = self._sender_of.pop(id(batch), None)
        pending = self._pending
        if len(pending) == 1 and sender is not None and sender not in self._acks:
            self._acks[sender] = pending[0]
            pending.clear()
        else:
            db = self._db
            try:
                if not db.in_transaction:
                    db.execute("BEGIN")
                self._write_pending()
            except sqlite3.Error as exc:
                self.error = exc
                raise self._write_error() from exc
        self._commit_soon()

    def _write_pending(self) -> None:
        pending = self._pending
        if self._acks:  # (acknowledgments no dispatch has carried yet)
            pending.extend(self._acks.values())
            self._acks.clear()
        if len(pending) == 1:
            self._db.execute("INSERT INTO done (lo, hi, outcome) VALUES (?, ?, 'a')",
                             pending[0])
        elif pending:
            self._db.executemany("INSERT INTO done (lo, hi, outcome) VALUES (?, ?, 'a')",
                                 pending)
        pending.clear()

    def _write_error(self) -> JournalWriteError:
        error = JournalWriteError(f"cannot write the job journal {self.path}: {self.error}")
        error.__cause__ = self.error
        return error

    def _commit_soon(self) -> None:
        if self._commit_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit()
            return
        self._commit_handle = loop.call_soon(self._commit_now)

    def _commit_now(self) -> None:
        self._commit_handle = None
        try:
            self.commit()
        except sqlite3.Error as exc:  # (raised at the next dispatch: the run stops)
            self.error = exc  # (said once, by the run that stops for it)

    def commit(self) -> None:
        """Make everything heard so far durable."""
        if self._acks or self._pending:
            if not self._db.in_transaction:
                self._db.execute("BEGIN")
            self._write_pending()
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def failed(self, failures: list[RecordFailure]) -> None:
        """Failed records, with their errors. A refusal of the record itself (a bad line, a
        400 for the entry, one entry too large) settles it; any other error (the server or
        the network failing, credentials refused, the quota wait running out) does not: the
        next run sends the record again, and the failure is kept until then.

        After :data:`OUTAGE_BATCHES` such failures in a row with nothing accepted between,
        raises :class:`ServerFailing` (once the failures are written): the run stops rather
        than try every record of the input against a server that is down."""
        rows = [self._failure_row(f) for f in failures]
        settled = [(f.position, f.position) for f, row in zip(failures, rows, strict=True)
                   if not row[8]]
        db = self._db
        try:
            if not db.in_transaction:
                db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO failures (key, file, line, kind, status, message, "
                "record, run, retry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if settled:
                db.executemany("INSERT INTO done (lo, hi, outcome) VALUES (?, ?, 'f')",
                               settled)
        except sqlite3.Error as exc:
            self.error = exc
            raise self._write_error() from exc
        self._commit_soon()
        if self.dead_letter is not None:
            for row in rows:
                self.dead_letter.write(orjson.dumps(
                    {"file": row[1], "line": row[2], "error": row[3], "status": row[4],
                     "message": row[5], "sent_again_on_resume": bool(row[8]),
                     "record": None if row[6] is None else orjson.Fragment(row[6])},
                    option=orjson.OPT_APPEND_NEWLINE))
            self.dead_letter.flush()
        if all(row[8] for row in rows):
            self._outage += 1
            if self._outage >= OUTAGE_BATCHES:
                raise ServerFailing(
                    f"{self._outage} batches in a row failed for a reason other than their "
                    f"records (the last: {failures[-1].error}); stopping rather than try the "
                    "whole input: run the same command again once the server answers")
        else:
            self._outage = 0

    def retry_failures_like(self, message: str) -> int:
        """This run's failures whose message is ``message`` but for numbers and ids (entries
        tried alone while the server refused the envelope, not the records): unsettled, to be
        sent again once the cause is fixed. Returns how many."""
        self.commit()
        pattern = reason_of(message)
        keys = [key for key, text in self._db.execute(
            "SELECT key, message FROM failures WHERE run = ? AND retry = 0", (self._run,))
            if reason_of(text) == pattern]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE failures SET retry = 1 WHERE key = ?",
                                 [(k,) for k in keys])
            self._db.executemany("DELETE FROM done WHERE lo = ? AND hi = ? AND outcome = 'f'",
                                 [(k, k) for k in keys])
        return len(keys)

    def where(self, key: int) -> tuple[str, int, str]:
        """The file, line (or item) and ``file:line`` label of a key."""
        index, line = split_key(key)
        name = self._names[index] if index < len(self._names) else f"input {index + 1}"
        return name, line, location(name, line, item=index in self._json_files)

    def _failure_row(self, failure: RecordFailure) -> tuple[Any, ...]:
        record = failure.record
        if isinstance(record, BadRecord):
            return (failure.position, record.file, record.line, "bad input", None,
                    record.reason, None if record.raw is None else orjson.dumps(record.raw),
                    self._run, 0)
        name, line, label = self.where(failure.position)
        error = failure.error
        status = error.status if isinstance(error, APIStatusError) else None
        message = str(error).replace(f"entries[{failure.position}]", label)
        try:
            blob: bytes | None = orjson.dumps(record)
        except TypeError:
            blob = orjson.dumps(repr(record))
        return (failure.position, name, line, type(error).__name__, status, message, blob,
                self._run, 0 if refuses_the_record(error) else 1)

    def close(self) -> None:
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        try:
            self._write_pending()
            self.commit()
        finally:
            self._db.close()


def _is_journal(db: sqlite3.Connection, tables: set[str]) -> bool:
    """Whether an existing SQLite file is a journal (checked before anything is written)."""
    if not {"meta", "done", "sent", "failures", "runs"} <= tables:
        return False
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None


def refuses_the_record(error: PangoCDPError) -> bool:
    """Whether ``error`` is about the record itself (sending it again changes nothing): the
    client's own refusal, or a 400, 413 or 422 answer to a request that held it."""
    if isinstance(error, (RequestValidationError, BadRequestError)):
        return True
    return isinstance(error, APIStatusError) and not isinstance(error, AuthenticationError) and (
        error.status in (400, 413, 422))


def _differences(known: dict[str, Any], settings: dict[str, Any],
                 known_inputs: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for name in sorted(set(known) | set(settings)):
        if known.get(name) != settings.get(name):
            problems.append(f"{name} was {known.get(name)!r}, now {settings.get(name)!r}")
    if len(known_inputs) != len(inputs):
        problems.append(f"it had {len(known_inputs)} input file(s), now {len(inputs)}")
        return problems
    for i, (was, now) in enumerate(zip(known_inputs, inputs, strict=True)):
        # (the modification time alone is no change: a touch, or the same file copied again)
        if {**was, "mtime_ns": None} == {**now, "mtime_ns": None}:
            continue
        label = now.get("path") or was.get("path") or f"input {i + 1}"
        if was.get("path") != now.get("path"):
            problems.append(f"input {i + 1} was {was.get('path')}, now {now.get('path')}")
        elif was.get("size") != now.get("size"):
            problems.append(f"{label} changed (size {was.get('size'):,} -> "
                            f"{now.get('size'):,} bytes)")
        else:
            problems.append(f"{label} changed since the job started")
    return problems
