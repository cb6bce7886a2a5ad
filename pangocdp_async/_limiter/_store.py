"""Where one scheduler's state survives a restart: a small SQLite table (stdlib sqlite3)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = ["QuotaStore", "SQLiteQuotaStore"]


class QuotaStore(Protocol):
    """Loads and saves one scheduler's state (a JSON-able dict)."""

    def load(self) -> dict[str, Any] | None:
        """The state saved last, or ``None``."""
        ...

    def save(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (replacing what was saved)."""
        ...


class SQLiteQuotaStore:
    """Keeps one scheduler's state in table ``quota_state`` of a SQLite file, one row per
    ``key``, so that the scheduler of a restarted process knows what its predecessor sent.

    It persists; it does **not** share. Each process paces on its own in-memory model and the
    store only receives snapshots of it (every few dozen sends and on close), so two processes
    given the same file and key each believe they own the whole quota and overwrite each other's
    snapshots: together they can send twice what a window allows. Give each process its own key
    (or file); for processes that run at once, share the quota with a
    :class:`SharedQuotaScheduler` instead. The file can hold other tables.
    """

    def __init__(self, path: str | Path, *, key: str = "default") -> None:
        self.path = Path(path)
        self.key = key
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS quota_state "
            "(key TEXT PRIMARY KEY, saved_at REAL NOT NULL, state BLOB NOT NULL)"
        )

    def __repr__(self) -> str:
        return f"SQLiteQuotaStore({str(self.path)!r}, key={self.key!r})"

    def load(self) -> dict[str, Any] | None:
        """The state saved last under this key, or ``None``."""
        row = self._conn.execute(
            "SELECT state FROM quota_state WHERE key = ?", (self.key,)
        ).fetchone()
        if row is None:
            return None
        state: dict[str, Any] = orjson.loads(row[0])
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Keep ``state`` under this key, in one transaction."""
        self._conn.execute(
            "INSERT INTO quota_state (key, saved_at, state) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET saved_at = excluded.saved_at, state = excluded.state",
            (self.key, time.time(), orjson.dumps(state)),
        )

    def close(self) -> None:
        """Close the file."""
        self._conn.close()
