"""Intake: each delivered message, on one thread of its own, becomes a scheduled command or an answer.

    delivery --> decode --> known id? (answered from the journal, or joins the run in progress)
                        --> deadline passed? policy refuses? (rejected)
                        --> control command? (answered here, from the worker's own state)
                        --> long job? (custody) --> scheduled on the executors

A message that is not a command is answered and dead-lettered. Before any delivery is looked at, the
intake thread resumes what dead owners left in the journal.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime

from messages.command import Command, CommandRejected, Undecodable, decode
from messages.operations import OPERATIONS
from messages.results import ErrorCode, Status
from worker.clock import utcnow
from worker.errors import OperationError
from worker.execution.claims import claims_for
from worker.execution.runner import error_result, make_result
from worker.execution.scheduler import Job, Scheduler
from worker.handlers.registry import HANDLERS
from worker.intake.cancellation import ControlContext
from worker.intake.custody import Custody, placeholder_for
from worker.intake.inflight import InFlight, InFlightTable
from worker.intake.policy import Policy
from worker.intake.settlement import Settlement, correlation, reply_to
from worker.state.journal import Journal, State
from worker.transport.port import Delivery, Link

log = logging.getLogger(__name__)

_RESUME = object()  # resume orphans of dead owners
_STOP = object()


class Intake:
    def __init__(self, *, link: Link, journal: Journal, flights: InFlightTable, settlement: Settlement,
                 custody: Custody, scheduler: Scheduler, policy: Policy, host: str,
                 execute: Callable[[Job], None]):
        """`execute(job)` runs a scheduled command on an executor thread."""
        self._link = link
        self._journal = journal
        self._flights = flights
        self._settlement = settlement
        self._custody = custody
        self._scheduler = scheduler
        self._policy = policy
        self._host = host
        self._execute = execute
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="intake", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        """Recovery runs first, before any delivery is looked at."""
        self._queue.put(_RESUME)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def on_delivery(self, delivery: Delivery) -> None:
        """Called on the I/O thread: hand over and return at once."""
        self._queue.put(delivery)

    def resume_soon(self) -> None:
        self._queue.put(_RESUME)

    def schedule(self, flight: InFlight) -> None:
        command = flight.command
        self._flights.add(flight)
        if not self._scheduler.submit(Job(id=command.id, claims=claims_for(command), run=self._execute)):
            self._flights.pop(command.id)
            if flight.delivery is not None:
                self._link.requeue(flight.delivery)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _RESUME:
                self._custody.resume_orphans(self.schedule)
                continue
            try:
                self._accept(item)
            except Exception:
                # Our own bug: give the message back; the queue's delivery limit dead-letters it if it
                # keeps failing, so one poison message cannot stall the worker.
                log.exception("intake failed; returning the message to the queue",
                              extra={"delivery_tag": item.delivery_tag})
                self._link.requeue(item)

    def _accept(self, delivery: Delivery) -> None:
        received_at = utcnow()
        try:
            command = decode(delivery.body)
        except Undecodable as error:
            self._settlement.undecodable(delivery, error.reason, received_at)
            return
        except CommandRejected as error:
            if not self._answered_from_journal(delivery, error.command_id, error.fingerprint, error.op):
                self._settlement.reject(delivery, error.command_id, error.op, error.fingerprint, ErrorCode.invalid,
                                        error.reason, received_at)
            return
        if self._flights.join(command.id, command.fingerprint, delivery):
            return
        operation = OPERATIONS[command.op]
        to, correlation_id = reply_to(delivery), correlation(delivery, command.id)
        if operation.read_only:
            # A read leaves nothing to reconcile after a crash: it is written once, with its result
            # (`finish_later`), or when the journal takes custody of it.
            new = not self._journal.known(command.id)
        else:
            # The insert tells a new id from a known one: no look-up on the common path.
            new = self._journal.receive(command.id, command.fingerprint, command.op, body=delivery.body,
                                        reply_to=to, correlation_id=correlation_id, runner=self._custody.owner)
        if not new and self._answered_from_journal(delivery, command.id, command.fingerprint, command.op):
            return
        if command.deadline is not None and command.deadline < received_at:
            self._settlement.reject(delivery, command.id, command.op, command.fingerprint, ErrorCode.expired,
                                    f"the deadline {command.deadline.isoformat()} passed before the command was "
                                    f"received at {received_at.isoformat()}", received_at)
            return
        try:
            self._policy.check(delivery.properties.user_id, command)
        except OperationError as refusal:
            log.warning("command refused by the authorization policy",
                        extra={"command_id": command.id, "op": command.op, "user_id": delivery.properties.user_id,
                               "reason": refusal.message})
            self._settlement.reject(delivery, command.id, command.op, command.fingerprint, refusal.code,
                                    refusal.message, received_at)
            return
        if operation.control:
            self._control(delivery, command, received_at)
            return
        flight = InFlight(command=command, received_at=received_at, reply_to=to, correlation_id=correlation_id,
                          delivery=delivery)
        if operation.long_running:
            self._custody.take(flight)
        self.schedule(flight)

    def _answered_from_journal(self, delivery: Delivery, command_id: str, fingerprint: str,
                               op: str | None) -> bool:
        """Handle a message whose id is known; False when the id is new (or must run again)."""
        if self._flights.join(command_id, fingerprint, delivery):
            return True
        entry = self._journal.get(command_id)
        if entry is None:
            return False
        if entry.fingerprint != fingerprint:
            self._settlement.conflict(delivery, command_id, op, entry.op)
            return True
        if entry.state is State.finished and entry.result is not None:
            if not entry.published:  # the run that made it died before the broker confirmed it
                self._settlement.republish(entry, placeholder_for(entry), delivery)
                return True
            self._settlement.duplicate(delivery, entry)
            return True
        if self._custody.leave_to_live_holder(delivery, entry):
            return True
        log.info("running again a command an earlier run did not finish",
                 extra={"command_id": command_id, "op": op, "state": entry.state.value})
        return False  # received or running in a process that died before owning it: run it again

    def _control(self, delivery: Delivery, command: Command, received_at: datetime) -> None:
        """A control command (job.cancel) is answered here, from the worker's own state."""
        ctl = ControlContext(command=command, host=self._host, scheduler=self._scheduler, flights=self._flights,
                             journal=self._journal, settlement=self._settlement)
        try:
            payload = HANDLERS[command.op](ctl, command.args)
        except OperationError as error:
            result = error_result(command.id, command.op, self._host, Status.failed, error.code, error.message,
                                  received_at, received_at)
        else:
            result = make_result(command_id=command.id, op=command.op, host=self._host, status=Status.succeeded,
                                 received_at=received_at, started_at=received_at, attempts=1,
                                 payload=payload.model_dump(mode="json"))
        self._settlement.answer(delivery, command, result)
