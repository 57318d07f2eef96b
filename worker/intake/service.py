"""How a message becomes a result.

    delivery (I/O thread) --> intake thread: decode, journal, dedupe, reject or schedule
                                   |
                                   v
                         scheduler (executor threads): run handler with retries
                                   |
                                   v
              journal.finish --> publish result (results exchange + reply_to), confirmed
                                   |
                                   v
                              ack the delivery (and answer repeats of the id as duplicates)

Custody. A command is acknowledged once its result is confirmed by the broker — unless the journal
takes custody first: long jobs (clone, wipe, upload, download) at once, any other command once it
has been held for OWN_AFTER seconds (waiting behind a long job on its volume, say). The journal then
keeps the command's body and reply address and the delivery is acked, so no job outlasts the
broker's consumer timeout. Journal-owned commands whose owner died (SIGKILL, a failed host in hot
standby) are resumed from the journal: at start and every few seconds after.

A message that repeats a known id is answered from the journal with duplicate=true, never executed
again; one that arrives while the first is still running waits for that run's result. Results the
broker never confirmed (the process died first) are published again at start.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from messages.command import Command, CommandRejected, Undecodable, decode
from messages.operations import OPERATIONS
from messages.payloads import JobCancelState
from messages.results import ErrorCode, Result, Status
from messages.topology import Topology
from messages.volumes import NoArgs
from worker.transport.link import AmqpLink, Delivery
from worker.execution.claims import claims_for
from worker.clock import utcnow
from worker.execution.runner import Runner, error_result, make_result
from worker.state.journal import Entry, Journal, State
from worker.telemetry.logs import command_context
from worker.errors import OperationError
from worker.telemetry.metrics import Metrics
from worker.intake.policy import Policy
from worker.transport.results import ResultPublisher, countdown
from worker.execution.scheduler import Job, Scheduler

log = logging.getLogger(__name__)

OWN_AFTER = 60.0  # seconds a command may keep its delivery unacknowledged (consumer timeout: 30 min)
HEARTBEAT = 2.0
STALE_AFTER = 15.0  # an owner whose heartbeat is older is dead
RETENTION = 7 * 86400.0
MAX_ROWS = 1_000_000


@dataclass
class InFlight:
    """A command this process is executing, and every delivery that waits for its result."""

    command: Command
    received_at: datetime
    reply_to: str | None
    correlation_id: str | None
    delivery: Delivery | None = None  # None once acked (journal custody) or when resumed from the journal
    held_since: float = field(default_factory=time.monotonic)
    repeats: list[Delivery] = field(default_factory=list)


def _reply_to(delivery: Delivery) -> str | None:
    return delivery.properties.reply_to or None


def _correlation(delivery: Delivery, command_id: str | None) -> str | None:
    return delivery.properties.correlation_id or command_id


_RECOVER = object()  # at start: publish unconfirmed results, resume orphans
_ORPHANS = object()  # later: resume orphans only
_STOP = object()


class CommandService:
    def __init__(self, *, topology: Topology, link: AmqpLink, journal: Journal, scheduler: Scheduler,
                 runner: Runner, owner: str, metrics: Metrics, policy: Policy, own_after: float = OWN_AFTER,
                 resume_limit: int = 5):
        self._topology = topology
        self._link = link
        self._journal = journal
        self._scheduler = scheduler
        self._runner = runner
        self._owner = owner
        self._own_after = own_after
        self._resume_limit = resume_limit
        self._metrics = metrics
        self._policy = policy
        self._results = ResultPublisher(link, topology)
        self._host = topology.host
        self._inflight: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._intake: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._intake_loop, name="intake", daemon=True)
        self._custodian = threading.Thread(target=self._custody_loop, name="custody", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        """Recovery runs first on the intake thread, before any delivery is looked at."""
        self._journal.heartbeat(self._owner)
        self._intake.put(_RECOVER)
        self._thread.start()
        self._custodian.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread, self._custodian]

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def on_delivery(self, delivery: Delivery) -> None:
        """Called on the I/O thread: hand over and return at once."""
        self._intake.put(delivery)

    def stop_intake(self) -> None:
        self._stopping.set()
        self._intake.put(_STOP)
        self._thread.join(timeout=10)
        self._custodian.join(timeout=10)

    def requeue_unstarted(self) -> int:
        """Give every command that never started back to the queue (graceful shutdown); the ones
        the journal owns stay there and are resumed at the next start."""
        unstarted = self._scheduler.drain()
        for job in unstarted:
            with self._lock:
                flight = self._inflight.pop(job.id, None)
            if flight is not None:
                for delivery in [flight.delivery, *flight.repeats]:
                    if delivery is not None:
                        self._link.requeue(delivery)
        return len(unstarted)

    def retire(self) -> None:
        """A clean stop: this owner row goes; anything it still owns is an orphan for the next start."""
        self._journal.retire(self._owner)

    # ---- intake thread -----------------------------------------------------------------------------

    def _intake_loop(self) -> None:
        while True:
            item = self._intake.get()
            if item is _STOP:
                return
            if item is _RECOVER:
                self._recover()
                continue
            if item is _ORPHANS:
                self._resume_orphans()
                continue
            try:
                self._accept(item)
            except Exception:
                # Our own bug: give the message back; the queue's delivery limit dead-letters it if it
                # keeps failing, so one poison message cannot stall the worker.
                log.exception("intake failed; returning the message to the queue",
                              extra={"delivery_tag": item.delivery_tag})
                self._link.requeue(item)

    def _republish(self, entry: Entry, delivery: Delivery | None = None) -> None:
        """Publish a stored result the broker never confirmed: the run that made it died first.
        `delivery`, a redelivery of its command, is acknowledged once the broker confirms."""
        with self._lock:
            self._inflight[entry.id] = InFlight(command=_placeholder(entry), received_at=entry.result.received_at,
                                                reply_to=entry.reply_to, correlation_id=entry.correlation_id,
                                                delivery=delivery)
        log.info("publishing a result the broker never confirmed", extra={"command_id": entry.id})
        reply_to = entry.reply_to or (_reply_to(delivery) if delivery else None)
        correlation_id = entry.correlation_id or (_correlation(delivery, entry.id) if delivery else None)
        self._results.publish(entry.result, reply_to, correlation_id,
                              then=lambda command_id=entry.id: self._settled(command_id))

    def _recover(self) -> None:
        self._resume_orphans()

    def _resume_orphans(self) -> None:
        """Take over what dead owners left: publish their unconfirmed results, run their unfinished
        commands again. (Commands the journal did not own come back from the broker instead.)"""
        for entry in self._journal.orphans(self._owner, STALE_AFTER):
            if not self._journal.take_over(entry.id, entry.owner, self._owner):
                continue
            with self._lock:
                if entry.id in self._inflight:
                    continue
            if entry.state is State.finished:
                if entry.result is not None:
                    self._republish(entry)
                continue
            if entry.body is None:
                continue
            try:
                command = decode(entry.body)
            except (Undecodable, CommandRejected):
                continue  # only commands that decoded were ever owned
            flight = InFlight(command=command, received_at=utcnow(), reply_to=entry.reply_to,
                              correlation_id=entry.correlation_id)
            if entry.resumes + 1 > self._resume_limit:
                self._give_up(flight, entry)
                continue
            log.info("resuming a command its owner left unfinished",
                     extra={"command_id": command.id, "op": command.op, "previous_owner": entry.owner})
            self._schedule(flight)

    def _give_up(self, flight: InFlight, entry: Entry) -> None:
        """A journal-held command whose runs keep dying with the worker: like a poison message that
        reached the queue's delivery limit, it fails and a copy goes to the dead-letter exchange."""
        reason = (f"the worker stopped {entry.resumes + 1} times while running this command; "
                  f"it is not run again (limit {self._resume_limit})")
        log.error("giving up a command that keeps dying with the worker", extra={"command_id": entry.id})
        command = flight.command
        result = error_result(command.id, command.op, self._host, Status.failed, ErrorCode.internal, reason,
                              flight.received_at)
        with self._lock:
            self._inflight[command.id] = flight
        self._results.dead_letter_body(entry.body, message_id=command.id, reply_to=entry.reply_to,
                                       correlation_id=entry.correlation_id, reason=reason, then=lambda: None)
        self._finish(flight, result)

    def _accept(self, delivery: Delivery) -> None:
        received_at = utcnow()
        try:
            command = decode(delivery.body)
        except Undecodable as error:
            self._undecodable(delivery, error.reason, received_at)
            return
        except CommandRejected as error:
            if not self._answered_from_journal(delivery, error.command_id, error.fingerprint, error.op):
                self._reject(delivery, error.command_id, error.op, error.fingerprint, ErrorCode.invalid,
                             error.reason, received_at)
            return
        if self._joined_running(delivery, command.id, command.fingerprint):
            return
        reply_to, correlation_id = _reply_to(delivery), _correlation(delivery, command.id)
        if OPERATIONS[command.op].read_only:
            # A read leaves nothing to reconcile after a crash: it is written once, with its result
            # (`finish_later`), or when the journal takes custody of it.
            new = not self._journal.known(command.id)
        else:
            # The insert tells a new id from a known one: no look-up on the common path.
            new = self._journal.receive(command.id, command.fingerprint, command.op, body=delivery.body,
                                        reply_to=reply_to, correlation_id=correlation_id)
        if not new and self._answered_from_journal(delivery, command.id, command.fingerprint, command.op):
            return
        if command.deadline is not None and command.deadline < received_at:
            self._reject(delivery, command.id, command.op, command.fingerprint, ErrorCode.expired,
                         f"the deadline {command.deadline.isoformat()} passed before the command was received "
                         f"at {received_at.isoformat()}", received_at)
            return
        try:
            self._policy.check(delivery.properties.user_id, command)
        except OperationError as refusal:
            log.warning("command refused by the authorization policy",
                        extra={"command_id": command.id, "op": command.op, "user_id": delivery.properties.user_id,
                               "reason": refusal.message})
            self._reject(delivery, command.id, command.op, command.fingerprint, refusal.code, refusal.message,
                         received_at)
            return
        if command.op == "job.cancel":
            self._cancel(delivery, command, received_at)
            return
        flight = InFlight(command=command, received_at=received_at, reply_to=reply_to,
                          correlation_id=correlation_id, delivery=delivery)
        if OPERATIONS[command.op].long_running:
            self._take_custody(flight)
        self._schedule(flight)

    def _schedule(self, flight: InFlight) -> None:
        command = flight.command
        with self._lock:
            self._inflight[command.id] = flight
        if not self._scheduler.submit(Job(id=command.id, claims=claims_for(command), run=self._execute)):
            with self._lock:
                self._inflight.pop(command.id, None)
            if flight.delivery is not None:
                self._link.requeue(flight.delivery)

    def _answered_from_journal(self, delivery: Delivery, command_id: str, fingerprint: str,
                               op: str | None) -> bool:
        """Handle a message whose id is known; False when the id is new (or must run again)."""
        if self._joined_running(delivery, command_id, fingerprint):
            return True
        entry = self._journal.get(command_id)
        if entry is None:
            return False
        if entry.fingerprint != fingerprint:
            conflict = error_result(command_id, op, self._host, Status.rejected, ErrorCode.conflict,
                                    f"command id {command_id!r} was already used for {entry.op} with other "
                                    f"arguments; send a new id for a new command", utcnow())
            self._results.answer_only(conflict, _reply_to(delivery), _correlation(delivery, command_id),
                                      then=lambda: self._link.ack(delivery))
            return True
        if entry.state is State.finished and entry.result is not None:
            if not entry.published:  # the run that made it died before the broker confirmed it
                self._republish(entry, delivery)
                return True
            self._results.answer_only(entry.result.model_copy(update={"duplicate": True}), _reply_to(delivery),
                                      _correlation(delivery, command_id), then=lambda: self._link.ack(delivery))
            return True
        log.info("running again a command an earlier run did not finish",
                 extra={"command_id": command_id, "op": op, "state": entry.state.value})
        return False  # received or running in a process that died before owning it: run it again

    def _joined_running(self, delivery: Delivery, command_id: str, fingerprint: str) -> bool:
        """A repeat of a command this process is still running (or publishing the result of)
        waits for that run's result, answered to it as a duplicate."""
        with self._lock:
            flight = self._inflight.get(command_id)
            if flight is not None and flight.command.fingerprint == fingerprint:
                flight.repeats.append(delivery)
                return True
        return False

    def _undecodable(self, delivery: Delivery, reason: str, received_at: datetime) -> None:
        """Not a command at all: answer reply_to if any, record on the results exchange, dead-letter.
        A redelivery of one already dead-lettered (its ack was lost) is only acknowledged."""
        message_id = delivery.properties.message_id
        key = f"message-id:{message_id}" if message_id else f"sha256:{hashlib.sha256(delivery.body).hexdigest()}"
        if delivery.redelivered and self._journal.dead_lettered(key):
            self._link.ack(delivery)
            return
        log.warning("undecodable message dead-lettered", extra={"reason": reason, "message_id": message_id})
        result = error_result(message_id, None, self._host, Status.rejected, ErrorCode.invalid,
                              f"the message cannot be read as a command: {reason}", received_at)
        self._metrics.result(result)

        def settled() -> None:
            self._journal.mark_dead_lettered(key)
            self._link.ack(delivery)

        done = countdown(2, settled)
        self._results.publish(result, _reply_to(delivery), _correlation(delivery, message_id), then=done)
        self._results.dead_letter(delivery, reason, then=done)

    def _reject(self, delivery: Delivery, command_id: str, op: str | None, fingerprint: str, code: ErrorCode,
                reason: str, received_at: datetime) -> None:
        log.info("command rejected", extra={"command_id": command_id, "op": op, "code": code.value,
                                            "reason": reason})
        result = error_result(command_id, op, self._host, Status.rejected, code, reason, received_at)
        self._metrics.result(result)
        self._journal.finish(command_id, fingerprint, result)
        self._results.publish(result, _reply_to(delivery), _correlation(delivery, command_id),
                              then=lambda: self._settled_alone(command_id, delivery))

    def _cancel(self, delivery: Delivery, command: Command, received_at: datetime) -> None:
        """job.cancel runs on the intake thread: it touches only the scheduler and the journal."""
        target_id = command.args.id
        state: str | None
        job = self._scheduler.withdraw(target_id)
        if job is not None:
            state = "cancelled"
            with self._lock:
                flight = self._inflight[target_id]
            target = flight.command
            cancelled = error_result(target.id, target.op, self._host, Status.cancelled, ErrorCode.cancelled,
                                     f"cancelled by job.cancel {command.id!r} before it started", flight.received_at)
            self._finish(flight, cancelled)
        elif (job := self._scheduler.find(target_id)) is not None:
            with self._lock:
                target_op = self._inflight[target_id].command.op
            if OPERATIONS[target_op].cancellable:
                job.cancel_requested.set()
                state = "cancelling"
            else:
                state = "not_cancellable"
        else:
            entry = self._journal.get(target_id)
            with self._lock:
                finishing = target_id in self._inflight  # ran to its end, result not yet confirmed
            state = "finished" if finishing or (entry is not None and entry.state is State.finished) else None
        if state is None:
            result = error_result(command.id, command.op, self._host, Status.failed, ErrorCode.not_found,
                                  f"no command with id {target_id!r} is queued, running or finished on host "
                                  f"{self._host}", received_at, received_at)
        else:
            result = make_result(command_id=command.id, op=command.op, host=self._host, status=Status.succeeded,
                                 received_at=received_at, started_at=received_at, attempts=1,
                                 payload=JobCancelState(id=target_id, state=state).model_dump(mode="json"))
        self._metrics.result(result)
        self._journal.finish(command.id, command.fingerprint, result)
        self._results.publish(result, _reply_to(delivery), _correlation(delivery, command.id),
                              then=lambda: self._settled_alone(command.id, delivery))

    # ---- custody -------------------------------------------------------------------------------------

    def _take_custody(self, flight: InFlight) -> None:
        """The journal owns the command from now on; its delivery is acknowledged."""
        delivery = flight.delivery
        if delivery is None:
            return
        command = flight.command
        if OPERATIONS[command.op].read_only:  # not written at intake
            self._journal.receive(command.id, command.fingerprint, command.op, body=delivery.body,
                                  reply_to=flight.reply_to, correlation_id=flight.correlation_id)
        self._journal.own(command.id, self._owner)
        flight.delivery = None
        self._link.ack(delivery)

    def _custody_loop(self) -> None:
        """Heartbeat; take custody of commands held too long; resume orphans of dead owners."""
        last_orphan_scan = last_prune = time.monotonic()
        while not self._stopping.wait(HEARTBEAT):
            try:
                self._journal.heartbeat(self._owner)
                self._journal.checkpoint()
                now = time.monotonic()
                with self._lock:
                    overdue = [f for f in self._inflight.values()
                               if f.delivery is not None and now - f.held_since >= self._own_after]
                for flight in overdue:
                    with self._lock:
                        if self._inflight.get(flight.command.id) is not flight:
                            continue
                        self._take_custody(flight)
                if now - last_orphan_scan >= STALE_AFTER / 3:
                    last_orphan_scan = now
                    if self._journal.orphans(self._owner, STALE_AFTER):
                        self._intake.put(_ORPHANS)
                if now - last_prune >= 3600:
                    last_prune = now
                    self._journal.prune(RETENTION, MAX_ROWS)
            except Exception:
                log.exception("custody pass failed")

    # ---- execution (executor threads) --------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        with self._lock:
            flight = self._inflight[job.id]
        with command_context(flight.command.id, flight.command.op):
            self._run(job, flight)

    def _run(self, job: Job, flight: InFlight) -> None:
        command = flight.command
        started_at = utcnow()
        if command.deadline is not None and command.deadline < started_at:
            result = error_result(command.id, command.op, self._host, Status.rejected, ErrorCode.expired,
                                  f"the deadline {command.deadline.isoformat()} passed before the command "
                                  f"could start at {started_at.isoformat()}", flight.received_at)
        else:
            if not OPERATIONS[command.op].read_only:  # a read has nothing to reconcile after a crash
                self._journal.start(command.id)
            result = self._runner.run(command, received_at=flight.received_at, started_at=started_at,
                                      cancel=job.cancel_requested)
        log.info("command finished", extra={"command_id": command.id, "op": command.op,
                                            "status": result.status.value, "attempts": result.attempts})
        self._finish(flight, result)

    def _finish(self, flight: InFlight, result: Result) -> None:
        self._metrics.result(result)
        body = result.model_dump_json()
        command = flight.command
        if OPERATIONS[command.op].read_only and flight.delivery is not None:
            # The broker still holds the read: if this process dies it comes back and runs again.
            self._journal.finish_later(command.id, command.fingerprint, result, body)
        else:
            self._journal.finish(command.id, command.fingerprint, result, body)
        self._results.publish(result, flight.reply_to, flight.correlation_id,
                              then=lambda: self._settled(flight.command.id), body=body.encode())

    def _settled(self, command_id: str) -> None:
        """The result is confirmed: ack the command and answer the repeats that waited for it."""
        self._journal.mark_published(command_id)
        with self._lock:
            flight = self._inflight.pop(command_id)
            delivery = flight.delivery
        if delivery is not None:
            self._link.ack(delivery)
        if flight.repeats:
            entry = self._journal.get(command_id)
            duplicate = entry.result.model_copy(update={"duplicate": True})
            for repeat in flight.repeats:
                self._results.answer_only(duplicate, _reply_to(repeat), _correlation(repeat, command_id),
                                          then=lambda r=repeat: self._link.ack(r))

    def _settled_alone(self, command_id: str, delivery: Delivery) -> None:
        self._journal.mark_published(command_id)
        self._link.ack(delivery)


def _placeholder(entry: Entry) -> Command:
    """What stands in the in-flight table for a stored result being published again: enough to
    absorb a redelivery of the same id."""
    return Command(id=entry.id, op=entry.op or "", args=NoArgs(), fingerprint=entry.fingerprint)
