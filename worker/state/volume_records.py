"""What the worker keeps about volumes across restarts: each volume's declared format, and the
clones it is still copying.

The declared format is the format a volume was made with (volume.create, volume.clone) or, for a
volume made outside the worker, the format libvirt reported the first time an operation of the
worker needed it. libvirt cannot keep it: a file pool probes every file's content on each refresh,
so a raw volume whose guest wrote a qcow2 header into it reads back as qcow2 — with whatever backing
file that header names. volume.attach writes the declared format as the disk's driver type and
volume.upload checks what it wrote against it (worker/handlers/untrusted.py).

A clone the worker copies itself (worker/handlers/clones.py) is marked, by pool and name, from
before its volume is made until its copy is complete: a worker killed in the middle leaves a volume
of the right name, size and format holding part of the data, which a repeat of the command must not
take for the finished clone.

SQLite in STATE_DIR (volumes.sqlite3, WAL); formats are keyed by the volume's libvirt key (its
path, for file volumes). A record that cannot be read or written is logged and the operation goes on without it:
it then falls back to libvirt's view, as for a volume it never saw.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "volumes.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS formats (
    key        TEXT PRIMARY KEY,
    format     TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS copies (
    pool       TEXT NOT NULL,
    name       TEXT NOT NULL,
    command_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (pool, name)
);
"""


class VolumeRecords:
    def __init__(self, path: Path | str):
        """`path` is a file, or ":memory:" for tests."""
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        with self._lock:
            if str(path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def declared(self, key: str) -> str | None:
        row = self._query("SELECT format FROM formats WHERE key = ?", (key,))
        return row[0] if row else None

    def declare(self, key: str, fmt: str) -> None:
        self._write("INSERT INTO formats (key, format, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                    "SET format = excluded.format, updated_at = excluded.updated_at", (key, fmt, time.time()))

    def forget(self, key: str) -> None:
        self._write("DELETE FROM formats WHERE key = ?", (key,))

    def unfinished_copy(self, pool: str, name: str) -> str | None:
        """The id of the command whose copy into this volume never finished, or None."""
        row = self._query("SELECT command_id FROM copies WHERE pool = ? AND name = ?", (pool, name))
        return row[0] if row else None

    def copy_started(self, pool: str, name: str, command_id: str) -> None:
        self._write("INSERT OR REPLACE INTO copies (pool, name, command_id, started_at) VALUES (?, ?, ?, ?)",
                    (pool, name, command_id, time.time()))

    def copy_ended(self, pool: str, name: str) -> None:
        self._write("DELETE FROM copies WHERE pool = ? AND name = ?", (pool, name))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, parameters: tuple) -> tuple | None:
        try:
            with self._lock:
                return self._db.execute(sql, parameters).fetchone()
        except sqlite3.Error as error:
            log.warning("cannot read the volume records", extra={"error": str(error)})
            return None

    def _write(self, sql: str, parameters: tuple) -> None:
        try:
            with self._lock:
                self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            log.warning("cannot write the volume records", extra={"error": str(error), "key": parameters[0]})
