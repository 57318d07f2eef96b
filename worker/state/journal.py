"""The command journal: SQLite (WAL) in STATE_DIR, keyed by command id, plus the event outbox.

A command moves received -> running -> finished; the finished row holds its result and whether the
broker has confirmed that result. A re-sent id is answered from here without running anything.

A command's delivery is acknowledged either once its result is confirmed or, for long jobs and for
commands held longer than a while, as soon as the journal *owns* it: the row then keeps the command's
body and reply address, and if the owning process dies, another (or the restarted) worker resumes it
from here — the broker will not redeliver it. Owners prove they are alive with a heartbeat.

WAL with synchronous=NORMAL survives the process being killed (what the worker guards against);
only a power loss may drop the last transactions.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from messages.results import Result
from worker.state.deferred import Batch, DeferredWrites
from worker.state.records import (COLUMNS, FINISH, FINISH_ALL, PUBLISHED_ALL, SCHEMA, UNPARK_ALL, Entry, Parked,
                                  State, entry_of, finish_parameters)

log = logging.getLogger(__name__)

# SQLite's primary result codes for a journal that cannot be written now, for reasons outside the
# worker: full disk, read-only file system, I/O errors, a lock held past the busy timeout.
_UNWRITABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY,
               sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN}
UNWRITABLE_RETRY_MIN = 0.5
UNWRITABLE_RETRY_MAX = 10.0


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"


class Journal:
    def __init__(self, path: Path | str):
        """`path` is a file, or ":memory:" for tests of pure logic."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._unwritable: str | None = None
        self._stop_waiting = threading.Event()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # No checkpoint inside a command's commit: a checkpoint fsyncs the database, and on a
            # disk busy with a transfer that can take long enough to stall every command behind the
            # journal's lock. `checkpoint()` does it from the custody thread instead.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(SCHEMA)
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_failing = False
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        # Writes deferred to the journal's next write (a result stored, an event parked, the next
        # heartbeat); read through these they are written already.
        self._deferred = DeferredWrites()

    @property
    def unwritable(self) -> str | None:
        """Why the journal cannot be written now, or None."""
        return self._unwritable

    def stop_waiting(self) -> None:
        """From now on a write the journal cannot make fails at once instead of waiting (shutdown)."""
        self._stop_waiting.set()

    def close(self) -> None:
        self._stop_waiting.set()
        with self._lock:
            try:
                self._commit_deferred()
            except sqlite3.OperationalError as error:
                log.error("the journal's last writes are lost: it cannot be written",
                          extra={"path": self._path, "error": str(error)})
            self._db.close()
            if self._checkpointer is not None:
                self._checkpointer.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database, on a connection of its own (PASSIVE: it never
        waits for, nor holds up, the writers). One that cannot be written (a full disk, an I/O
        error) is skipped — the log keeps the changes for the next — and False returned: it must
        not end the custody pass that asks for it (heartbeat, custody of overdue commands, orphans)."""
        if self._path == ":memory:":
            return True
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError as exc:
            if not self._checkpoint_failing:
                log.warning("cannot checkpoint the journal; its write-ahead log keeps the changes",
                            extra={"error": str(exc)})
            self._checkpoint_failing = True
            return False
        self._checkpoint_failing = False
        return True

    def _run(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        return self._writing(lambda: self._db.execute(sql, parameters))

    def _writing(self, write: Callable[[], object]):
        """`write()` under the lock. While the journal cannot be written (full disk, read-only file
        system, I/O error) wait and try again rather than fail: a command whose record cannot be
        kept must neither run nor go back to the broker (every return spends one of its
        deliveries), and a result must not go out unrecorded. `unwritable` says why meanwhile (the
        worker is not ready); `stop_waiting` ends the wait."""
        delay = UNWRITABLE_RETRY_MIN
        while True:
            with self._lock:
                try:
                    done = write()
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode & 0xFF not in _UNWRITABLE or self._stop_waiting.is_set():
                        raise
                    failure = error
                else:
                    if self._unwritable is not None:
                        log.warning("the journal can be written again", extra={"path": self._path})
                        self._unwritable = None
                    return done
            if self._unwritable is None:
                log.error("the journal cannot be written; commands wait until it can",
                          extra={"path": self._path, "error": str(failure)})
            self._unwritable = f"the journal {self._path} cannot be written: {failure}"
            if self._stop_waiting.wait(delay):
                raise failure
            delay = min(delay * 2, UNWRITABLE_RETRY_MAX)

    # ---- commands ------------------------------------------------------------------------------

    def get(self, command_id: str) -> Entry | None:
        with self._lock:
            later, confirmed = self._deferred.read(command_id)
            row = None if later is not None else \
                self._db.execute(f"SELECT {COLUMNS} FROM commands WHERE id = ?", (command_id,)).fetchone()
        if later is not None:
            entry = Entry(id=later[0], fingerprint=later[1], op=later[2], state=State.finished,
                          result=Result.model_validate_json(later[3]), published=False)
        elif row is None:
            return None
        else:
            entry = entry_of(row)
        return replace(entry, published=True) if confirmed else entry

    def known(self, command_id: str) -> bool:
        if self._deferred.holds_result(command_id):
            return True
        return self._run("SELECT 1 FROM commands WHERE id = ?", (command_id,)).fetchone() is not None

    def receive(self, command_id: str, fingerprint: str, op: str | None, *, body: bytes | None = None,
                reply_to: str | None = None, correlation_id: str | None = None) -> bool:
        """Record a new command; False when the id is already known."""
        now = time.time()
        cursor = self._run(
            "INSERT OR IGNORE INTO commands (id, fingerprint, op, state, body, reply_to, correlation_id, "
            "received_at, updated_at) VALUES (?, ?, ?, 'received', ?, ?, ?, ?, ?)",
            (command_id, fingerprint, op, body, reply_to, correlation_id, now, now))
        return cursor.rowcount == 1

    def start(self, command_id: str, runner: str, stale_after: float) -> str | None:
        """Claim the run of a command for `runner` (an owner id) and mark it running; None when
        claimed, else the owner that runs it now. Several processes share a journal (a hot standby):
        when the broker hands a command to another consumer while the process that started it still
        runs it (that process lost its connection, not its life), the claim makes sure one process
        runs it. An owner whose heartbeat is older than `stale_after` seconds, or whose process is
        gone on this machine, holds no claim."""
        def claim() -> str | None:
            self._db.execute("BEGIN IMMEDIATE")  # the check and the claim, with no other writer between
            try:
                row = self._db.execute("SELECT r.runner, o.hostname, o.pid, o.heartbeat FROM runs r "
                                       "LEFT JOIN owners o ON o.owner = r.runner WHERE r.id = ?",
                                       (command_id,)).fetchone()
                if row is not None and row[0] != runner and _alive(row[1], row[2], row[3], stale_after):
                    self._db.execute("ROLLBACK")
                    return row[0]
                self._db.execute("INSERT OR REPLACE INTO runs (id, runner) VALUES (?, ?)", (command_id, runner))
                self._db.execute("UPDATE commands SET state = 'running', updated_at = ? WHERE id = ?",
                                 (time.time(), command_id))
                self._db.execute("COMMIT")
                return None
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return self._writing(claim)

    def own(self, command_id: str, owner: str) -> None:
        """From now on the journal, not the broker, holds this unfinished command for `owner`."""
        self._run("UPDATE commands SET owner = ?, updated_at = ? WHERE id = ? AND state != 'finished'",
                  (owner, time.time(), command_id))

    def finish(self, command_id: str, fingerprint: str, result: Result, body: str | None = None) -> None:
        """Store the terminal result (inserting the row for commands rejected before being received);
        `body` is the result's JSON when the caller has it already."""
        self._with_deferred(FINISH, finish_parameters(command_id, fingerprint, result, body))

    def finish_later(self, command_id: str, fingerprint: str, result: Result, body: str | None = None) -> None:
        """Store the result of a read with the next heartbeat (or at once when enough wait:
        worker/state/deferred.py): until then it is read from memory. A read has no
        side effect, so a process killed before the write loses nothing a new run cannot give: the
        broker redelivers the read (its result was not confirmed yet, or the ack was lost with the
        process) and it runs again. What it saves is a transaction per read. Other writes (results
        of other commands, events) do not carry these: an event would wait for their rows."""
        parameters = finish_parameters(command_id, fingerprint, result, body)  # kept as JSON: a list is big
        if self._deferred.finish_later(command_id, parameters):
            self._with_deferred(results=True)

    def _with_deferred(self, sql: str | None = None, parameters: tuple = (), *,
                       results: bool = False) -> sqlite3.Cursor | None:
        """The deferred writes (with the results of reads, if `results`), and one statement if
        given, in one transaction."""
        return self._writing(lambda: self._commit_deferred(sql, parameters, results=results))

    def _commit_deferred(self, sql: str | None = None, parameters: tuple = (), *,
                         results: bool = True) -> sqlite3.Cursor | None:
        """Under the lock: `_with_deferred`. On failure the deferred writes wait for the next one."""
        self._db.execute("BEGIN")
        batch = self._deferred.take(results)
        try:
            self._write_deferred(batch)
            cursor = None if sql is None else self._db.execute(sql, parameters)
            self._db.execute("COMMIT")
            return cursor
        except BaseException:
            if self._db.in_transaction:  # SQLite rolled back already after some errors (a full disk)
                self._db.execute("ROLLBACK")
            self._deferred.put_back(batch)
            raise

    def mark_published(self, command_id: str) -> None:
        """The broker confirmed the command's result. The flag is written with the journal's next write
        (at the latest the next heartbeat; for a read, with its result); a process killed before that
        publishes the result again at restart (an identical copy, which consumers drop by id)."""
        self._deferred.confirmed(command_id)

    def _write_deferred(self, batch: Batch) -> None:
        """Under the lock: store deferred results, then set the flags of confirmed results (some
        may be of those results), delete confirmed events."""
        if batch.finished_later:
            self._db.execute(FINISH_ALL, (json.dumps(list(batch.finished_later.values())),))
        if batch.confirmed:
            self._db.execute(PUBLISHED_ALL, (json.dumps(list(batch.confirmed)),))
        if batch.unparked:
            self._db.execute(UNPARK_ALL, (json.dumps(list(batch.unparked)),))

    def orphans(self, me: str, stale_after: float) -> list[Entry]:
        """What the journal holds for an owner that is gone (its heartbeat is older than
        `stale_after` seconds, or its process no longer exists on this machine): unfinished
        commands, and finished ones whose result the broker never confirmed."""
        rows = self._run(
            f"SELECT {', '.join('c.' + c for c in COLUMNS.split(', '))}, o.hostname, o.pid, o.heartbeat "
            "FROM commands c LEFT JOIN owners o ON o.owner = c.owner "
            "WHERE (c.state != 'finished' OR c.published = 0) AND c.owner IS NOT NULL AND c.owner != ?",
            (me,)).fetchall()
        found = []
        for row in rows:
            hostname, pid, heartbeat = row[-3:]
            if not _alive(hostname, pid, heartbeat, stale_after):
                found.append(entry_of(row[:-3]))
        return found

    def take_over(self, command_id: str, old_owner: str, new_owner: str) -> bool:
        """Atomically move an orphan to a new owner, counting the resume; False when someone else
        was faster."""
        cursor = self._run("UPDATE commands SET owner = ?, resumes = resumes + 1 WHERE id = ? AND owner = ?",
                           (new_owner, command_id, old_owner))
        return cursor.rowcount == 1

    def heartbeat(self, owner: str) -> None:
        """This owner is alive; the results of reads waiting in memory are written with it."""
        self._with_deferred("INSERT INTO owners (owner, hostname, pid, heartbeat) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT(owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                            (owner, socket.gethostname(), os.getpid(), time.time()), results=True)

    def retire(self, owner: str) -> None:
        """A clean stop: the owner row goes (it owns nothing unfinished any more)."""
        self._run("DELETE FROM owners WHERE owner = ?", (owner,))

    def count(self) -> int:
        """Commands held: rows, and results of reads still to be written. Rows are counted on a
        connection of their own (a reader in WAL mode holds up no writer): at a million rows the
        count takes about 10 ms, which every metrics scrape would otherwise add to the commands'
        journal writes."""
        waiting = self._deferred.results_waiting()
        return waiting + self._rows()

    def _rows(self) -> int:
        if self._path == ":memory:":
            return self._run("SELECT COUNT(*) FROM commands").fetchone()[0]
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            return self._reader.execute("SELECT COUNT(*) FROM commands").fetchone()[0]

    def prune(self, older_than_seconds: float, keep_at_most: int | None = None) -> int:
        """Forget finished, published commands older than the given age, and the oldest of them
        beyond `keep_at_most` rows; returns how many went. Unfinished rows are never pruned."""
        cutoff = time.time() - older_than_seconds
        # A result whose flag was never written (the process died after the confirm) is kept only
        # while its command may come back: a row no owner resumes is old news after the retention.
        removed = self._run("DELETE FROM commands WHERE state = 'finished' AND (published = 1 OR owner IS NULL) "
                            "AND updated_at < ?", (cutoff,)).rowcount
        if keep_at_most is not None:
            excess = self._rows() - keep_at_most
            if excess > 0:
                removed += self._run(
                    "DELETE FROM commands WHERE id IN (SELECT id FROM commands WHERE state = 'finished' "
                    "AND published = 1 ORDER BY updated_at LIMIT ?)", (excess,)).rowcount
        self._run("DELETE FROM runs WHERE id NOT IN (SELECT id FROM commands WHERE state != 'finished')")
        self._run("DELETE FROM owners WHERE heartbeat < ?", (time.time() - 7 * 86400,))
        self._run("DELETE FROM dead_lettered WHERE at < ?", (cutoff,))
        return removed

    # ---- undecodable messages already dead-lettered --------------------------------------------------

    def dead_lettered(self, key: str) -> bool:
        return self._run("SELECT 1 FROM dead_lettered WHERE key = ?", (key,)).fetchone() is not None

    def mark_dead_lettered(self, key: str) -> None:
        self._run("INSERT OR IGNORE INTO dead_lettered (key, at) VALUES (?, ?)", (key, time.time()))

    # ---- event outbox ------------------------------------------------------------------------------

    def park(self, exchange: str, routing_key: str, body: bytes, headers: str) -> int:
        return self._with_deferred(
            "INSERT INTO outbox (exchange, routing_key, body, headers, created) VALUES (?, ?, ?, ?, ?)",
            (exchange, routing_key, body, headers, time.time())).lastrowid

    def unpark(self, seqs: list[int]) -> None:
        """The broker confirmed these events: deleted with the next write (see worker/state/deferred.py). A
        process killed before that publishes them again at restart (same id and sequence)."""
        self._deferred.unparked(seqs)

    def parked(self) -> list[Parked]:
        with self._lock:
            rows = self._db.execute("SELECT seq, exchange, routing_key, body, headers FROM outbox ORDER BY seq") \
                .fetchall()
            gone = self._deferred.events_confirmed()
        return [Parked(*row) for row in rows if row[0] not in gone]

    def trim_parked(self, keep_at_most: int) -> int:
        """Drop the oldest parked events beyond the bound; returns how many."""
        return self._run("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                         (keep_at_most,)).rowcount


def _alive(hostname: str | None, pid: int | None, heartbeat: float | None, stale_after: float) -> bool:
    """Whether an owner (its row in `owners`) is alive: a recent heartbeat, and on this machine a
    process that still exists."""
    if heartbeat is None or heartbeat < time.time() - stale_after:
        return False
    return hostname != socket.gethostname() or process_alive(pid)


def process_alive(pid: int | None) -> bool:
    """Whether a process of this machine exists (signal 0: nothing is sent)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
