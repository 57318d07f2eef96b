"""The journal's tables, its statements, and the records read from them (worker/state/journal.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from messages.results import Result

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id             TEXT PRIMARY KEY,
    fingerprint    TEXT NOT NULL,
    op             TEXT,
    state          TEXT NOT NULL,
    result         TEXT,
    published      INTEGER NOT NULL DEFAULT 0,
    body           BLOB,
    reply_to       TEXT,
    correlation_id TEXT,
    owner          TEXT,
    resumes        INTEGER NOT NULL DEFAULT 0,
    runner         TEXT,
    received_at    REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_updated ON commands(updated_at);
CREATE INDEX IF NOT EXISTS commands_open ON commands(state, published);
CREATE TABLE IF NOT EXISTS owners (
    owner     TEXT PRIMARY KEY,
    hostname  TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_lettered (
    key TEXT PRIMARY KEY,
    at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body        BLOB NOT NULL,
    headers     TEXT NOT NULL,
    created     REAL NOT NULL
);
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
    reply_to: str | None = None
    correlation_id: str | None = None
    owner: str | None = None
    body: bytes | None = None
    resumes: int = 0
    #: the worker process that received the command (its owner id); with a hot standby sharing the
    #: journal, a redelivery may reach the other process while this one still runs the command
    runner: str | None = None


@dataclass(frozen=True)
class Parked:
    """An event waiting in the outbox for the broker."""

    seq: int
    exchange: str
    routing_key: str
    body: bytes
    headers: str


COLUMNS = "id, fingerprint, op, state, result, published, reply_to, correlation_id, owner, body, resumes, runner"

# A terminal result; the row exists already unless the command was rejected before being received
# (or is a read, written only with its result).
FINISH = ("INSERT INTO commands (id, fingerprint, op, state, result, received_at, updated_at) "
           "VALUES (?, ?, ?, 'finished', ?, ?, ?) "
           "ON CONFLICT(id) DO UPDATE SET state = 'finished', result = excluded.result, body = NULL, "
           "updated_at = excluded.updated_at")

# The deferred writes, each as one statement over a JSON array of rows. One statement, not one per
# row (executemany): Python gives up the GIL for every statement SQLite steps, and with a dozen busy
# threads taking it back can take milliseconds each time — all while the journal's lock is held.
FINISH_ALL = ("INSERT INTO commands (id, fingerprint, op, state, result, received_at, updated_at) "
               "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
               "'finished', json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') "
               "FROM json_each(?) WHERE true "
               "ON CONFLICT(id) DO UPDATE SET state = 'finished', result = excluded.result, body = NULL, "
               "updated_at = excluded.updated_at")
PUBLISHED_ALL = "UPDATE commands SET published = 1 WHERE id IN (SELECT value FROM json_each(?))"
UNPARK_ALL = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))"


def finish_parameters(command_id: str, fingerprint: str, result: Result, body: str | None) -> tuple:
    now = time.time()
    return command_id, fingerprint, result.op, body or result.model_dump_json(), now, now


def entry_of(row: tuple) -> Entry:
    return Entry(id=row[0], fingerprint=row[1], op=row[2], state=State(row[3]),
                 result=Result.model_validate_json(row[4]) if row[4] else None, published=bool(row[5]),
                 reply_to=row[6], correlation_id=row[7], owner=row[8], body=row[9], resumes=row[10],
                 runner=row[11])
