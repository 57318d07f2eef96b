"""Publishing results (docs/contract.md "Results"): to the results exchange and the command's
reply_to, persistent and confirmed; and copies of undecodable messages to the dead-letter exchange."""

from __future__ import annotations

import struct
from collections.abc import Callable

from pika.exceptions import AMQPError
from pika.spec import BasicProperties

from messages.results import Result
from messages.topology import Topology
from worker.transport.port import Delivery, Link, Outgoing

REASON_HEADER = "x-storage-worker-reason"
DROPPED_HEADER = "x-storage-worker-headers-dropped"
# The most a dead letter's properties may take when they carry the original's headers. A content
# header must fit in one AMQP frame (131072 bytes unless the broker says less): a copy that does
# not is answered by the broker closing the connection, and the copy, sent again after every
# reconnect, closes it again and again. Half a frame leaves the original room to spare.
MAX_COPIED_PROPERTIES = 64 * 1024


class _Countdown:
    """Runs `then` after `count` confirmations (all on the I/O thread, so no lock is needed)."""

    def __init__(self, count: int, then: Callable[[], None]):
        self._left = count
        self._then = then

    def tick(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._then()


class ResultPublisher:
    def __init__(self, link: Link, topology: Topology):
        self._link = link
        self._topology = topology

    def publish(self, result: Result, reply_to: str | None, correlation_id: str | None,
                then: Callable[[], None], body: bytes | None = None) -> None:
        """To the results exchange and `reply_to`; `then` runs (on the I/O thread) once both are
        confirmed by the broker. `body` is the result's JSON when the caller has it already."""
        body = body if body is not None else result.model_dump_json().encode()
        pending = _Countdown(1 + bool(reply_to), then)
        messages = [self._message(self._topology.results_exchange, result.routing_key(), result, None, pending.tick,
                                  body)]
        if reply_to:
            messages.append(self._message("", reply_to, result, correlation_id or result.id, pending.tick, body))
        self._link.publish(*messages)

    def answer_only(self, result: Result, reply_to: str | None, correlation_id: str | None,
                    then: Callable[[], None]) -> None:
        """A duplicate or an id conflict: to reply_to only (the results exchange saw the original)."""
        if not reply_to:
            then()
            return
        self._link.publish(self._message("", reply_to, result, correlation_id or result.id, then,
                                         result.model_dump_json().encode()))

    def dead_letter(self, delivery: Delivery, reason: str, then: Callable[[], None]) -> None:
        """A copy of an undecodable message to the dead-letter exchange, saying why in a header."""
        props = delivery.properties
        headers = dict(props.headers or {})
        headers[REASON_HEADER] = reason
        dead = BasicProperties(content_type=props.content_type, content_encoding=props.content_encoding,
                               headers=headers, delivery_mode=2, correlation_id=props.correlation_id,
                               reply_to=props.reply_to, message_id=props.message_id, timestamp=props.timestamp,
                               type=props.type, app_id=props.app_id)
        unfit = _unfit_to_copy(dead)
        if unfit is not None:
            dead.headers = {REASON_HEADER: reason, DROPPED_HEADER: unfit}
        self._link.publish(Outgoing(self._topology.dead_letter_exchange, delivery.routing_key, delivery.body,
                                    dead, then))

    def dead_letter_body(self, body: bytes, *, message_id: str, reply_to: str | None, correlation_id: str | None,
                         reason: str, then: Callable[[], None]) -> None:
        """A command the journal held (no delivery any more) to the dead-letter exchange."""
        properties = BasicProperties(content_type="application/json", delivery_mode=2, message_id=message_id,
                                     reply_to=reply_to, correlation_id=correlation_id,
                                     headers={REASON_HEADER: reason})
        self._link.publish(Outgoing(self._topology.dead_letter_exchange, self._topology.command_routing_key,
                                    body, properties, then))

    @staticmethod
    def _message(exchange: str, routing_key: str, result: Result, correlation_id: str | None,
                 on_confirmed: Callable[[], None], body: bytes) -> Outgoing:
        properties = BasicProperties(content_type="application/json", delivery_mode=2,
                                     correlation_id=correlation_id, message_id=result.id,
                                     type="result", app_id="storage-worker")
        return Outgoing(exchange, routing_key, body, properties, on_confirmed)


def _unfit_to_copy(properties: BasicProperties) -> str | None:
    """Why the original's headers cannot go with its dead letter, or None when they can: pika
    decodes header values it cannot encode again (floats, for one), and a copy can outgrow a frame."""
    try:
        size = sum(len(piece) for piece in properties.encode())
    except (AMQPError, ValueError, TypeError, OverflowError, struct.error) as error:
        return f"pika cannot send the original headers again ({error.__class__.__name__})"
    if size > MAX_COPIED_PROPERTIES:
        return f"the original headers take {size} bytes with the reason, over the {MAX_COPIED_PROPERTIES} a copy may"
    return None


def countdown(count: int, then: Callable[[], None]) -> Callable[[], None]:
    """A callback that runs `then` on its `count`-th call."""
    return _Countdown(count, then).tick
