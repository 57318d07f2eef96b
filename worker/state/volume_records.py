"""What the worker keeps about volumes across restarts: each volume's declared format, and the
clones it is still copying.

The declared format is the format a volume was made with (volume.create, volume.clone) or, for a
volume made outside the worker, the format libvirt reported the first time an operation of the
worker needed it. libvirt cannot keep it: a file pool probes every file's content on each refresh,
so a raw volume whose guest wrote a qcow2 header into it reads back as qcow2 — with whatever backing
file that header names. volume.attach writes the declared format as the disk's driver type and
volume.upload checks what it wrote against it (worker/handlers/untrusted.py).

A clone the worker copies itself (worker/handlers/clones.py) is marked while it copies: a worker
killed in the middle leaves a volume of the right name, size and format holding part of the data,
which a repeat of the command must not take for the finished clone.

SQLite in STATE_DIR (volumes.sqlite3, WAL), keyed by the volume's libvirt key (its path, for file
volumes). A record that cannot be read or written is logged and the operation goes on without it:
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
CREATE TABLE IF NOT EXISTS volumes (
    key        TEXT PRIMARY KEY,
    format     TEXT NOT NULL,
    copying    TEXT,
    updated_at REAL NOT NULL
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
        row = self._query("SELECT format FROM volumes WHERE key = ?", (key,))
        return row[0] if row else None

    def declare(self, key: str, fmt: str) -> None:
        self._write("INSERT INTO volumes (key, format, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                    "SET format = excluded.format, copying = NULL, updated_at = excluded.updated_at",
                    (key, fmt, time.time()))

    def copying(self, key: str) -> str | None:
        """The id of the command whose copy into this volume never finished, or None."""
        row = self._query("SELECT copying FROM volumes WHERE key = ?", (key,))
        return row[0] if row else None

    def start_copy(self, key: str, fmt: str, command_id: str) -> None:
        self._write("INSERT INTO volumes (key, format, copying, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET format = excluded.format, copying = excluded.copying, "
                    "updated_at = excluded.updated_at", (key, fmt, command_id, time.time()))

    def forget(self, key: str) -> None:
        self._write("DELETE FROM volumes WHERE key = ?", (key,))

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
