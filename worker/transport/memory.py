"""A transport in memory, for tests of the whole command path without a broker.

Like the real link it runs every callback it owes (confirms, acks) on one thread of its own, in the
order they were asked for, so the code under test sees the same threading as with RabbitMQ. Unlike
it, every publish is confirmed at once (or held, when a test says so), deliveries are made by the
test (`deliver`), and everything published or settled is recorded for the test to look at.
"""

from __future__ import annotations

import itertools
import json
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any

from pika.exceptions import AMQPError
from pika.spec import FRAME_MAX_SIZE, BasicProperties

from worker.transport.port import Delivery, Outgoing


class MemoryLink:
    def __init__(self, on_delivery: Callable[[Delivery], None]):
        self._on_delivery = on_delivery
        self._lock = threading.RLock()  # predicates of `wait` read the records under it
        self._changed = threading.Condition(self._lock)
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="memory-io", daemon=True)
        self._tags = itertools.count(1)
        self._confirming = True
        self._held: list[Outgoing] = []
        self.published: list[Outgoing] = []
        self.unsendable: list[Outgoing] = []  # what a broker would refuse (see _publish)
        self.acked: list[int] = []
        self.requeued: list[int] = []
        self.consuming = True
        self.blocked = False
        self.dropped_events = 0

    # ---- what the worker calls ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        return True

    @property
    def is_ready(self) -> bool:
        return self._thread.is_alive()

    def silent_for(self) -> float:
        return 0.0  # nothing between the worker and this broker can be cut

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def publish(self, *messages: Outgoing) -> None:
        self._work.put(lambda: self._publish(messages))

    def ack(self, delivery: Delivery) -> None:
        self._work.put(lambda: self._settle(self.acked, delivery))

    def requeue(self, delivery: Delivery) -> None:
        self._work.put(lambda: self._settle(self.requeued, delivery))

    def lost(self, delivery: Delivery) -> bool:
        return False  # the memory link never loses a channel

    def stop_consuming(self) -> None:
        self.consuming = False

    def close(self, timeout: float = 10.0) -> None:
        self._work.put(None)
        self._thread.join(timeout)

    # ---- what a test calls ----------------------------------------------------------------------

    def deliver(self, body: bytes | dict[str, Any], *, reply_to: str | None = "replies",
                correlation_id: str | None = None, message_id: str | bytes | None = None, user_id: str | None = None,
                redelivered: bool = False, **other: Any) -> Delivery:
        """A message from the command queue, as the broker would deliver it (a dict is sent as JSON).
        `other` properties (headers, content_type, ...) as pika decodes them: a short string that is
        not UTF-8 arrives as bytes."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        properties = BasicProperties(**{"content_type": "application/json", **other}, reply_to=reply_to,
                                     correlation_id=correlation_id, message_id=message_id, user_id=user_id)
        delivery = Delivery(generation=0, delivery_tag=next(self._tags), redelivered=redelivered,
                            routing_key="host", properties=properties, body=body)
        self._work.put(lambda: self._on_delivery(delivery))
        return delivery

    def hold_confirms(self) -> None:
        """From now on publishes are recorded but not confirmed, as with a broker slow to confirm."""
        with self._lock:
            self._confirming = False

    def confirm_held(self) -> None:
        """Confirm what was held, in order, and every publish from now on."""
        def release() -> None:
            with self._lock:
                self._confirming = True
                held, self._held = self._held, []
            for message in held:
                if message.on_confirmed is not None:
                    message.on_confirmed()
        self._work.put(release)

    def sent_to(self, exchange: str) -> list[tuple[str, dict[str, Any]]]:
        """(routing key, JSON body) of everything published to `exchange` ("" for reply queues)."""
        with self._lock:
            return [(m.routing_key, json.loads(m.body)) for m in self.published if m.exchange == exchange]

    def wait(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until `predicate()` is true after something was published or settled."""
        with self._lock:
            value = self._changed.wait_for(predicate, timeout)
        if not value:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__doc__', None) or predicate}")
        return value

    # ---- the I/O thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            work()

    def _publish(self, messages: tuple[Outgoing, ...]) -> None:
        # What RabbitMQ would not take: properties pika cannot encode never leave the real link (they
        # wait in its outbox), and a content header larger than a frame closes the connection.
        sendable = [m for m in messages if _fits_a_frame(m.properties)]
        with self._lock:
            self.unsendable.extend(m for m in messages if m not in sendable)
            messages = tuple(sendable)
            self.published.extend(messages)
            confirming = self._confirming
            if not confirming:
                self._held.extend(messages)
            self._changed.notify_all()
        if confirming:
            for message in messages:
                if message.on_confirmed is not None:
                    message.on_confirmed()

    def _settle(self, into: list[int], delivery: Delivery) -> None:
        with self._lock:
            into.append(delivery.delivery_tag)
            self._changed.notify_all()


def _fits_a_frame(properties: BasicProperties) -> bool:
    try:
        encoded = sum(len(piece) for piece in properties.encode())
    except (AMQPError, ValueError, TypeError, OverflowError, struct.error):
        return False
    return encoded + _CONTENT_HEADER_OVERHEAD <= FRAME_MAX_SIZE


_CONTENT_HEADER_OVERHEAD = 8 + 12  # frame header and end, then class, weight and body size
