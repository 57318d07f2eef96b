"""Settling a command: its terminal result stored in the journal, published (results exchange and
reply_to, confirmed by the broker), then its delivery acknowledged and the deliveries that repeated
its id answered as duplicates.

Every way a command ends goes through here: a result of the executors, a rejection at intake, an
answer from the journal to a repeated id, a result published again after a crash, a message that is
not a command at all.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from messages.command import Command
from messages.operations import OPERATIONS
from messages.results import ErrorCode, Result, Status
from worker.clock import utcnow
from worker.execution.runner import error_result
from worker.intake.inflight import InFlight, InFlightTable
from worker.state.journal import Entry, Journal
from worker.telemetry.metrics import Metrics
from worker.transport.port import Delivery, Link
from worker.transport.results import ResultPublisher, countdown

log = logging.getLogger(__name__)


def text_of(value: str | bytes | None) -> str | None:
    """A short-string property as text. pika hands one that is not UTF-8 over as bytes; a result
    names it with its bytes escaped (b'\\x80' becomes '\\\\x80')."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def reply_to(delivery: Delivery) -> str | None:
    return delivery.properties.reply_to or None


def correlation(delivery: Delivery, command_id: str | None) -> str | None:
    return delivery.properties.correlation_id or command_id


class Settlement:
    def __init__(self, *, link: Link, journal: Journal, results: ResultPublisher, flights: InFlightTable,
                 metrics: Metrics, host: str):
        self._link = link
        self._journal = journal
        self._results = results
        self._flights = flights
        self._metrics = metrics
        self._host = host

    def finish(self, flight: InFlight, result: Result) -> None:
        """Store and publish the terminal result of a command in the table; settled once confirmed."""
        self._metrics.result(result)
        body = result.model_dump_json()
        command = flight.command
        if OPERATIONS[command.op].read_only and flight.delivery is not None:
            if all(self._link.lost(d) for d in [flight.delivery, *flight.repeats]):
                # The broker took the read back with the channel and gives it to the consumer that
                # took over (a hot standby, or this process again): that one answers it, so two
                # different answers never go out.
                log.info("dropping the result of a read whose delivery went back to the queue",
                         extra={"command_id": command.id, "op": command.op})
                self._flights.pop(command.id)
                return
            # The broker still holds the read: if this process dies it comes back and runs again.
            self._journal.finish_later(command.id, command.fingerprint, result, body)
        else:
            self._journal.finish(command.id, command.fingerprint, result, body)
        self._results.publish(result, flight.reply_to, flight.correlation_id,
                              then=lambda: self._settled(command.id), body=body.encode())

    def answer(self, delivery: Delivery, command: Command, result: Result) -> None:
        """The result of a command answered at intake without entering the table (a rejection, a
        control command): stored, published, then its delivery acknowledged."""
        self._metrics.result(result)
        self._journal.finish(command.id, command.fingerprint, result)
        self._results.publish(result, reply_to(delivery), correlation(delivery, command.id),
                              then=lambda: self._settled_alone(command.id, delivery))

    def reject(self, delivery: Delivery, command_id: str, op: str | None, fingerprint: str, code: ErrorCode,
               reason: str, received_at: datetime) -> None:
        log.info("command rejected", extra={"command_id": command_id, "op": op, "code": code.value,
                                            "reason": reason})
        result = error_result(command_id, op, self._host, Status.rejected, code, reason, received_at)
        self._metrics.result(result)
        self._journal.finish(command_id, fingerprint, result)
        self._results.publish(result, reply_to(delivery), correlation(delivery, command_id),
                              then=lambda: self._settled_alone(command_id, delivery))

    def duplicate(self, delivery: Delivery, entry: Entry) -> None:
        """A repeat of a finished, confirmed command: its stored result again, to reply_to only."""
        self._results.answer_only(entry.result.model_copy(update={"duplicate": True}), reply_to(delivery),
                                  correlation(delivery, entry.id), then=lambda: self._link.ack(delivery))

    def from_other_run(self, flight: InFlight, entry: Entry) -> None:
        """A command another process of this host ran while the broker gave it to this one: its
        stored result answers every delivery held here, as a duplicate when that process's publish
        was confirmed, else published again (an identical copy)."""
        if not entry.published:
            log.info("publishing a result the broker never confirmed", extra={"command_id": entry.id})
            self._results.publish(entry.result, flight.reply_to, flight.correlation_id,
                                  then=lambda: self._settled(entry.id))
            return
        with self._flights.lock:
            self._flights.pop(entry.id)
        for delivery in [flight.delivery, *flight.repeats]:
            if delivery is not None:
                self.duplicate(delivery, entry)

    def conflict(self, delivery: Delivery, command_id: str, op: str | None, used_for: str | None) -> None:
        """An id already used for other arguments: rejected, to reply_to only."""
        result = error_result(command_id, op, self._host, Status.rejected, ErrorCode.conflict,
                              f"command id {command_id!r} was already used for {used_for} with other "
                              f"arguments; send a new id for a new command", utcnow())
        self._results.answer_only(result, reply_to(delivery), correlation(delivery, command_id),
                                  then=lambda: self._link.ack(delivery))

    def republish(self, entry: Entry, placeholder: Command, delivery: Delivery | None = None) -> None:
        """Publish a stored result the broker never confirmed: the run that made it died first.
        `delivery`, a redelivery of its command, is acknowledged once the broker confirms.
        `placeholder` stands in the table for the command, to absorb further repeats of the id."""
        self._flights.add(InFlight(command=placeholder, received_at=entry.result.received_at,
                                   reply_to=entry.reply_to, correlation_id=entry.correlation_id, delivery=delivery))
        log.info("publishing a result the broker never confirmed", extra={"command_id": entry.id})
        to = entry.reply_to or (reply_to(delivery) if delivery else None)
        correlation_id = entry.correlation_id or (correlation(delivery, entry.id) if delivery else None)
        self._results.publish(entry.result, to, correlation_id, then=lambda: self._settled(entry.id))

    def give_up(self, flight: InFlight, entry: Entry, reason: str) -> None:
        """A journal-held command that is not run again: it fails, and a copy of it goes to the
        dead-letter exchange saying why."""
        command = flight.command
        result = error_result(command.id, command.op, self._host, Status.failed, ErrorCode.internal, reason,
                              flight.received_at)
        self._flights.add(flight)
        self._results.dead_letter_body(entry.body, message_id=command.id, reply_to=entry.reply_to,
                                       correlation_id=entry.correlation_id, reason=reason, then=lambda: None)
        self.finish(flight, result)

    def undecodable(self, delivery: Delivery, reason: str, received_at: datetime) -> None:
        """Not a command at all: answer reply_to if any, record on the results exchange, dead-letter.
        A redelivery of one already dead-lettered (its ack was lost) is only acknowledged."""
        message_id = text_of(delivery.properties.message_id)
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
        self._results.publish(result, reply_to(delivery), correlation(delivery, message_id), then=done)
        self._results.dead_letter(delivery, reason, then=done)

    def _settled(self, command_id: str) -> None:
        """The result is confirmed: ack the command and answer the repeats that waited for it."""
        self._journal.mark_published(command_id)
        with self._flights.lock:
            flight = self._flights.pop(command_id)
            delivery = flight.delivery
        if delivery is not None:
            self._link.ack(delivery)
        if flight.repeats:
            entry = self._journal.get(command_id)
            duplicate = entry.result.model_copy(update={"duplicate": True})
            for repeat in flight.repeats:
                self._results.answer_only(duplicate, reply_to(repeat), correlation(repeat, command_id),
                                          then=lambda r=repeat: self._link.ack(r))

    def _settled_alone(self, command_id: str, delivery: Delivery) -> None:
        self._journal.mark_published(command_id)
        self._link.ack(delivery)
