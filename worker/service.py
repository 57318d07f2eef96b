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

A command is acknowledged only after its result is confirmed by the broker. A message that repeats
a known id is answered from the journal with duplicate=true, never executed again; one that
arrives while the first is still running waits for that run's result.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime

from pika.spec import BasicProperties

from messages.command import Command, CommandRejected, Undecodable, decode
from messages.operations import OPERATIONS
from messages.payloads import JobCancelState
from messages.results import ErrorCode, Result, Status
from messages.topology import Topology
from worker.amqp.link import AmqpLink, Delivery, Outgoing
from worker.claims import claims_for
from worker.events import utcnow
from worker.execution import Runner, error_result, make_result
from worker.journal import Journal, State
from worker.scheduler import Job, Scheduler

log = logging.getLogger(__name__)

REASON_HEADER = "x-storage-worker-reason"


@dataclass
class InFlight:
    """A command this process is executing, and every delivery that waits for its result."""

    command: Command
    delivery: Delivery
    received_at: datetime
    repeats: list[Delivery] = field(default_factory=list)


def _reply_to(delivery: Delivery) -> str | None:
    return delivery.properties.reply_to or None


def _correlation(delivery: Delivery, command_id: str | None) -> str | None:
    return delivery.properties.correlation_id or command_id


class CommandService:
    def __init__(self, *, topology: Topology, link: AmqpLink, journal: Journal, scheduler: Scheduler,
                 runner: Runner):
        self._topology = topology
        self._link = link
        self._journal = journal
        self._scheduler = scheduler
        self._runner = runner
        self._host = topology.host
        self._inflight: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._intake: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._intake_loop, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_delivery(self, delivery: Delivery) -> None:
        """Called on the I/O thread: hand over and return at once."""
        self._intake.put(delivery)

    def stop_intake(self) -> None:
        self._intake.put(None)
        self._thread.join(timeout=10)

    def requeue_unstarted(self) -> int:
        """Give every command that never started back to the queue (graceful shutdown)."""
        unstarted = self._scheduler.drain()
        for job in unstarted:
            with self._lock:
                flight = self._inflight.pop(job.id, None)
            if flight is not None:
                for delivery in [flight.delivery, *flight.repeats]:
                    self._link.requeue(delivery)
        return len(unstarted)

    # ---- intake --------------------------------------------------------------------------------

    def _intake_loop(self) -> None:
        while True:
            delivery = self._intake.get()
            if delivery is None:
                return
            try:
                self._accept(delivery)
            except Exception:
                # Our own bug: give the message back; the queue's delivery limit dead-letters it if it
                # keeps failing, so one poison message cannot stall the worker.
                log.exception("intake failed; returning the message to the queue",
                              extra={"delivery_tag": delivery.delivery_tag})
                self._link.requeue(delivery)

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
        if self._answered_from_journal(delivery, command.id, command.fingerprint, command.op):
            return
        if command.deadline is not None and command.deadline < received_at:
            self._reject(delivery, command.id, command.op, command.fingerprint, ErrorCode.expired,
                         f"the deadline {command.deadline.isoformat()} passed before the command was received "
                         f"at {received_at.isoformat()}", received_at)
            return
        self._journal.receive(command.id, command.fingerprint, command.op)
        if command.op == "job.cancel":
            self._cancel(delivery, command, received_at)
            return
        with self._lock:
            self._inflight[command.id] = InFlight(command=command, delivery=delivery, received_at=received_at)
        job = Job(id=command.id, claims=claims_for(command), run=self._execute)
        if not self._scheduler.submit(job):
            with self._lock:
                self._inflight.pop(command.id, None)
            self._link.requeue(delivery)

    def _answered_from_journal(self, delivery: Delivery, command_id: str, fingerprint: str,
                               op: str | None) -> bool:
        """Handle a message whose id is known; False when the id is new."""
        with self._lock:
            flight = self._inflight.get(command_id)
            if flight is not None and flight.command.fingerprint == fingerprint:
                flight.repeats.append(delivery)
                return True
            entry = self._journal.get(command_id)
        if entry is None:
            return False
        if entry.fingerprint != fingerprint:
            self._answer_only(delivery, error_result(
                command_id, op, self._host, Status.rejected, ErrorCode.conflict,
                f"command id {command_id!r} was already used for {entry.op} with other arguments; "
                f"send a new id for a new command", utcnow()))
            return True
        if entry.state is State.finished and entry.result is not None:
            if entry.published:
                self._answer_only(delivery, entry.result.model_copy(update={"duplicate": True}))
            else:
                # The result was stored but never confirmed by the broker: the world has not seen it.
                self._publish_result(entry.result, delivery, then=lambda: self._settled_stored(command_id, delivery))
            return True
        return False  # received or running in an earlier process: run it again (handlers converge)

    def _undecodable(self, delivery: Delivery, reason: str, received_at: datetime) -> None:
        """Not a command at all: answer reply_to if any, record on the results exchange, dead-letter."""
        message_id = delivery.properties.message_id
        log.warning("undecodable message dead-lettered", extra={"reason": reason, "message_id": message_id})
        result = error_result(message_id, None, self._host, Status.rejected, ErrorCode.invalid,
                              f"the message cannot be read as a command: {reason}", received_at)
        pending = _Countdown(2 + bool(_reply_to(delivery)), lambda: self._link.ack(delivery))
        self._publish(self._topology.results_exchange, result.routing_key(), result, None, pending.tick)
        if _reply_to(delivery):
            self._publish("", _reply_to(delivery), result, _correlation(delivery, message_id), pending.tick)
        headers = dict(delivery.properties.headers or {})
        headers[REASON_HEADER] = reason
        props = delivery.properties
        dead = BasicProperties(content_type=props.content_type, content_encoding=props.content_encoding,
                               headers=headers, delivery_mode=2, correlation_id=props.correlation_id,
                               reply_to=props.reply_to, message_id=props.message_id, timestamp=props.timestamp,
                               type=props.type, app_id=props.app_id)
        self._link.publish(Outgoing(self._topology.dead_letter_exchange, delivery.routing_key, delivery.body,
                                    dead, pending.tick))

    def _reject(self, delivery: Delivery, command_id: str, op: str | None, fingerprint: str, code: ErrorCode,
                reason: str, received_at: datetime) -> None:
        log.info("command rejected", extra={"command_id": command_id, "op": op, "code": code.value,
                                            "reason": reason})
        result = error_result(command_id, op, self._host, Status.rejected, code, reason, received_at)
        self._journal.finish(command_id, fingerprint, result)
        self._publish_result(result, delivery, then=lambda: self._settled_stored(command_id, delivery))

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
            self._journal.finish(target.id, target.fingerprint, cancelled)
            self._publish_result(cancelled, flight.delivery, then=lambda: self._settled(target.id))
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
        self._journal.finish(command.id, command.fingerprint, result)
        self._publish_result(result, delivery, then=lambda: self._settled_stored(command.id, delivery))

    # ---- execution (executor threads) --------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        with self._lock:
            flight = self._inflight[job.id]
        command = flight.command
        started_at = utcnow()
        if command.deadline is not None and command.deadline < started_at:
            result = error_result(command.id, command.op, self._host, Status.rejected, ErrorCode.expired,
                                  f"the deadline {command.deadline.isoformat()} passed before the command "
                                  f"could start at {started_at.isoformat()}", flight.received_at)
        else:
            self._journal.start(command.id)
            result = self._runner.run(command, received_at=flight.received_at, started_at=started_at,
                                      cancel=job.cancel_requested)
        log.info("command finished", extra={"command_id": command.id, "op": command.op,
                                            "status": result.status.value, "attempts": result.attempts})
        self._journal.finish(command.id, command.fingerprint, result)
        self._publish_result(result, flight.delivery, then=lambda: self._settled(command.id))

    def _settled(self, command_id: str) -> None:
        """The result is confirmed: ack the command and answer the repeats that waited for it."""
        self._journal.mark_published(command_id)
        with self._lock:
            flight = self._inflight.pop(command_id)
        self._link.ack(flight.delivery)
        entry = self._journal.get(command_id)
        for repeat in flight.repeats:
            assert entry is not None and entry.result is not None
            self._answer_only(repeat, entry.result.model_copy(update={"duplicate": True}))

    def _settled_stored(self, command_id: str, delivery: Delivery) -> None:
        self._journal.mark_published(command_id)
        self._link.ack(delivery)

    # ---- publishing ----------------------------------------------------------------------------------

    def _publish_result(self, result: Result, delivery: Delivery, *, then) -> None:
        """To the results exchange and the command's reply_to; `then` runs once both are confirmed."""
        reply_to = _reply_to(delivery)
        pending = _Countdown(1 + bool(reply_to), then)
        self._publish(self._topology.results_exchange, result.routing_key(), result, None, pending.tick)
        if reply_to:
            self._publish("", reply_to, result, _correlation(delivery, result.id), pending.tick)

    def _answer_only(self, delivery: Delivery, result: Result) -> None:
        """A duplicate or an id conflict: to reply_to only (the results exchange saw the original)."""
        reply_to = _reply_to(delivery)
        if not reply_to:
            self._link.ack(delivery)
            return
        self._publish("", reply_to, result, _correlation(delivery, result.id), lambda: self._link.ack(delivery))

    def _publish(self, exchange: str, routing_key: str, result: Result, correlation_id: str | None,
                 on_confirmed) -> None:
        properties = BasicProperties(content_type="application/json", delivery_mode=2,
                                     correlation_id=correlation_id, message_id=result.id,
                                     type="result", app_id="storage-worker")
        body = result.model_dump_json().encode()
        self._link.publish(Outgoing(exchange, routing_key, body, properties, on_confirmed))


class _Countdown:
    """Runs `then` after `count` confirmations (all on the I/O thread, so no lock is needed)."""

    def __init__(self, count: int, then):
        self._left = count
        self._then = then

    def tick(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._then()
