"""Custody: when the journal, not the broker, holds a command; and the journal's housekeeping.

RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer timeout (30 min by
default). So the journal takes custody of long jobs (clone, wipe, upload, download) at once and of
any other command held for `own_after` seconds (waiting behind a long job on its volume, say): it
keeps the command's body and reply address, and the delivery is acknowledged.

The custody thread proves this owner alive (a heartbeat row, which also writes the results of reads
waiting in memory), checkpoints the journal's write-ahead log, takes custody of overdue commands,
notices owners that died (their heartbeat is stale, or their pid is gone on this machine) so their
commands are resumed, and prunes old rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from messages.command import Command, CommandRejected, Undecodable, decode
from messages.operations import OPERATIONS
from messages.volumes import NoArgs
from worker.clock import utcnow
from worker.intake.inflight import InFlight, InFlightTable
from worker.intake.settlement import Settlement
from worker.state.journal import Entry, Journal, State
from worker.transport.port import Delivery, Link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustodyTimings:
    """Every timing of custody and the journal's housekeeping, in one place."""

    own_after: float = 60.0  # OWN_AFTER: seconds a command may hold its delivery unacknowledged
    heartbeat: float = 2.0  # seconds between an owner's heartbeats (and checkpoints)
    stale_after: float = 15.0  # an owner whose heartbeat is older is dead
    prune_every: float = 3600.0  # seconds between prunings of the journal
    retention: float = 7 * 86400.0  # JOURNAL_RETENTION: finished commands are kept this long...
    max_rows: int = 1_000_000  # JOURNAL_MAX_ROWS: ...and at most this many
    resume_limit: int = 5  # DELIVERY_LIMIT: resumes of a journal-held command before it fails

    @property
    def orphan_scan(self) -> float:
        """Seconds between looks for dead owners' commands."""
        return self.stale_after / 3


class Custody:
    def __init__(self, *, journal: Journal, link: Link, flights: InFlightTable, settlement: Settlement,
                 owner: str, timings: CustodyTimings, resume_soon: Callable[[], None]):
        """`resume_soon()` asks the intake thread to call `resume_orphans` (it schedules them)."""
        self._journal = journal
        self._link = link
        self._flights = flights
        self._settlement = settlement
        self._owner = owner
        self._timings = timings
        self._resume_soon = resume_soon
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="custody", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._journal.heartbeat(self._owner)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def retire(self) -> None:
        """A clean stop: this owner row goes; anything it still owns is an orphan for the next start."""
        self._journal.retire(self._owner)

    def take(self, flight: InFlight) -> None:
        """The journal owns the command from now on; its delivery is acknowledged."""
        with self._flights.lock:
            delivery = flight.delivery
            if delivery is None:
                return
            command = flight.command
            operation = OPERATIONS.get(command.op)  # None: a placeholder whose stored result waits for a confirm
            if operation is not None and operation.read_only:  # not written at intake
                self._journal.receive(command.id, command.fingerprint, command.op, body=delivery.body,
                                      reply_to=flight.reply_to, correlation_id=flight.correlation_id)
            self._journal.own(command.id, self._owner)
            flight.delivery = None
            self._link.ack(delivery)

    @property
    def owner(self) -> str:
        return self._owner

    def leave_to_live_holder(self, delivery: Delivery, entry: Entry) -> bool:
        """A redelivered command that another live process sharing the journal holds (it received
        it, or owns it) — with a hot standby, closing the active worker's connection hands its
        unacknowledged deliveries to the standby while the active one still runs them. Running it
        here as well would run it twice: the journal takes custody of it for that holder (a
        holder that dies later leaves it as an orphan, resumed like any other) and the delivery is
        acknowledged. False when no live process holds it."""
        holder = entry.owner or entry.runner
        if holder is None or holder == self._owner or not self._journal.alive(holder, self._timings.stale_after):
            return False
        self._journal.own(entry.id, holder)
        log.info("a live process holds this redelivered command; it is not run here as well",
                 extra={"command_id": entry.id, "op": entry.op, "holder": holder})
        self._link.ack(delivery)
        return True

    def resume_orphans(self, schedule: Callable[[InFlight], None]) -> None:
        """Take over what dead owners left (on the intake thread): publish their unconfirmed results,
        run their unfinished commands again through `schedule`. (Commands the journal did not own
        come back from the broker instead.)"""
        for entry in self._journal.orphans(self._owner, self._timings.stale_after):
            if not self._journal.take_over(entry.id, entry.owner, self._owner):
                continue
            if entry.id in self._flights:
                continue
            if entry.state is State.finished:
                if entry.result is not None:
                    self._settlement.republish(entry, placeholder_for(entry))
                continue
            if entry.body is None:
                continue
            try:
                command = decode(entry.body)
            except (Undecodable, CommandRejected):
                continue  # only commands that decoded were ever owned
            flight = InFlight(command=command, received_at=utcnow(), reply_to=entry.reply_to,
                              correlation_id=entry.correlation_id)
            limit = self._timings.resume_limit
            if entry.resumes + 1 > limit:
                # Like a poison message that reached the queue's delivery limit.
                log.error("giving up a command that keeps dying with the worker", extra={"command_id": entry.id})
                self._settlement.give_up(flight, entry, f"the worker stopped {entry.resumes + 1} times while "
                                                        f"running this command; it is not run again (limit {limit})")
                continue
            log.info("resuming a command its owner left unfinished",
                     extra={"command_id": command.id, "op": command.op, "previous_owner": entry.owner})
            schedule(flight)

    def _loop(self) -> None:
        timings = self._timings
        last_orphan_scan = last_prune = time.monotonic()
        while not self._stopping.wait(timings.heartbeat):
            try:
                self._journal.heartbeat(self._owner)
                self._journal.checkpoint()
                now = time.monotonic()
                for flight in self._flights.overdue(now, timings.own_after):
                    with self._flights.lock:
                        if self._flights.get(flight.command.id) is flight:
                            self.take(flight)
                if now - last_orphan_scan >= timings.orphan_scan:
                    last_orphan_scan = now
                    if self._journal.orphans(self._owner, timings.stale_after):
                        self._resume_soon()
                if now - last_prune >= timings.prune_every:
                    last_prune = now
                    self._journal.prune(timings.retention, timings.max_rows)
            except Exception:
                log.exception("custody pass failed")


def placeholder_for(entry: Entry) -> Command:
    """What stands in the in-flight table for a stored result being published again: enough to
    absorb a redelivery of the same id."""
    return Command(id=entry.id, op=entry.op or "", args=NoArgs(), fingerprint=entry.fingerprint)
