"""The command journal: SQLite (WAL) in STATE_DIR, keyed by command id.

A command moves received -> running -> finished; the finished row holds its result and whether the
broker has confirmed that result. A re-sent id is answered from here without running anything.
WAL with synchronous=NORMAL survives the process being killed (what the worker guards against);
only a power loss may drop the last transactions.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from messages.results import Result

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    op          TEXT,
    state       TEXT NOT NULL,
    result      TEXT,
    published   INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_updated ON commands(updated_at);
"""


class State(str, Enum):
    received = "received"
    running = "running"
    finished = "finished"


@dataclass(frozen=True)
class Entry:
    id: str
    fingerprint: str
    op: str | None
    state: State
    result: Result | None
    published: bool


class Journal:
    def __init__(self, path: Path | str):
        """`path` is a file, or ":memory:" for tests of pure logic."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, command_id: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, fingerprint, op, state, result, published FROM commands WHERE id = ?",
                (command_id,)).fetchone()
        if row is None:
            return None
        return Entry(id=row[0], fingerprint=row[1], op=row[2], state=State(row[3]),
                     result=Result.model_validate_json(row[4]) if row[4] else None, published=bool(row[5]))

    def receive(self, command_id: str, fingerprint: str, op: str | None) -> bool:
        """Record a new command; False when the id is already known."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO commands (id, fingerprint, op, state, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (command_id, fingerprint, op, State.received.value, now, now))
        return cursor.rowcount == 1

    def start(self, command_id: str) -> None:
        self._set_state(command_id, State.running)

    def finish(self, command_id: str, fingerprint: str, result: Result) -> None:
        """Store the terminal result (inserting the row for commands rejected before being received)."""
        now = time.time()
        body = result.model_dump_json()
        with self._lock:
            self._db.execute(
                "INSERT INTO commands (id, fingerprint, op, state, result, received_at, updated_at) "
                "VALUES (?, ?, ?, 'finished', ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = 'finished', result = excluded.result, "
                "updated_at = excluded.updated_at",
                (command_id, fingerprint, result.op, body, now, now))

    def mark_published(self, command_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE commands SET published = 1 WHERE id = ?", (command_id,))

    def prune(self, older_than_seconds: float) -> int:
        """Forget finished, published commands older than the given age; returns how many."""
        cutoff = time.time() - older_than_seconds
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM commands WHERE state = 'finished' AND published = 1 AND updated_at < ?", (cutoff,))
        return cursor.rowcount

    def _set_state(self, command_id: str, state: State) -> None:
        with self._lock:
            self._db.execute("UPDATE commands SET state = ?, updated_at = ? WHERE id = ?",
                             (state.value, time.time(), command_id))
