"""The soak's side of the broker: publishing commands and collecting what comes back, over any node
of the soak's cluster, reconnecting to the next node whenever one drops it (a node restart, a
closed connection). Results and replies wait in quorum queues of the soak's own, so a node restart
loses none of them. Single-threaded: the driver's loop owns it.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from tests.amqp_helpers import declare_exchanges, retrying

QUORUM = {"x-queue-type": "quorum"}


@dataclass
class Inbox:
    """Everything collected, by command id."""

    results: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    undecodable: list[dict] = field(default_factory=list)   # results without an id (`<host>.unknown.rejected`)
    #: every event taken from the live path (the events exchange, through a quorum queue of the soak's)
    events: list[dict] = field(default_factory=list)


class Bus:
    def __init__(self, urls: list[str], prefix: str):
        self.urls = list(urls)
        self.prefix = prefix
        self.results_queue = f"{prefix}.soak-results"
        self.replies_queue = f"{prefix}.soak-replies"
        self.events_queue = f"{prefix}.soak-events"
        self.inbox = Inbox()
        self.reconnects = 0
        self._node = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self.retrying(self._declare)

    # ---------------------------------------------------------------------------- connection

    def _connect(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is not None:
            with contextlib.suppress(Exception):  # an already broken connection
                self._connection.close()
            self.reconnects += 1
        url = self.urls[self._node % len(self.urls)]
        self._node += 1
        parameters = pika.URLParameters(url)
        parameters.socket_timeout = 5
        parameters.blocked_connection_timeout = 30
        self._connection = pika.BlockingConnection(parameters)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        return self._channel

    def retrying(self, action, timeout: float = 120) -> Any:
        return retrying(action, self._connect, self._forget_channel, timeout, pause=0.3)

    def _forget_channel(self) -> None:
        self._channel = None

    def _declare(self, channel: Any) -> None:
        declare_exchanges(channel, self.prefix)
        for queue in (self.results_queue, self.replies_queue, self.events_queue):
            channel.queue_declare(queue, durable=True, arguments=QUORUM)
        channel.queue_bind(self.results_queue, f"{self.prefix}.results", "#")
        channel.queue_bind(self.events_queue, f"{self.prefix}.events", "#")

    # -------------------------------------------------------------------------------- traffic

    def publish(self, host: str, body: bytes, message_id: str | None, correlation_id: str) -> int:
        """Publish until the broker confirms it; the number of times it had to be sent again (each of
        them an identical re-send the worker answers as a duplicate, or not at all if the first one
        was lost)."""
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=message_id,
                                          reply_to=self.replies_queue, correlation_id=correlation_id)
        attempts = 0

        def send(channel: Any) -> None:
            nonlocal attempts
            attempts += 1
            channel.basic_publish(f"{self.prefix}.commands", host, body, properties)
        self.retrying(send)
        return attempts - 1

    def collect(self) -> int:
        """Fetch whatever waits; the number of messages taken."""
        taken = 0

        def drain(channel: Any) -> None:
            nonlocal taken
            for queue, box in ((self.results_queue, self.inbox.results), (self.replies_queue, self.inbox.replies)):
                for _ in range(500):
                    method, _properties, body = channel.basic_get(queue, auto_ack=False)
                    if method is None:
                        break
                    taken += 1
                    message = json.loads(body)
                    channel.basic_ack(method.delivery_tag)
                    if message.get("id") is None or message.get("op") is None:
                        if box is self.inbox.results:
                            self.inbox.undecodable.append(message)
                        if message.get("id") is None:
                            continue
                    box[message["id"]].append(message)
            for _ in range(2000):
                method, _properties, body = channel.basic_get(self.events_queue, auto_ack=False)
                if method is None:
                    break
                taken += 1
                self.inbox.events.append(json.loads(body))
                channel.basic_ack(method.delivery_tag)
        self.retrying(drain)
        return taken

    def read_queue(self, queue: str) -> list[tuple[dict, bytes]]:
        """Every message of a (quorum) queue as (headers, body), taken and left in place (nacked back)."""
        def read(channel: Any) -> list[tuple[dict, bytes]]:
            found = []
            tags = []
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                tags.append(method.delivery_tag)
                found.append((dict(properties.headers or {}), body))
            if tags:
                channel.basic_nack(tags[-1], multiple=True, requeue=True)
            return found
        return self.retrying(read)

    def read_stream(self, queue: str, idle: float = 3.0) -> list[tuple[str, dict]]:
        """The whole event stream from its first offset, as (routing key, event) pairs, until nothing
        new came for `idle` seconds."""
        def read(channel: Any) -> list[tuple[str, dict]]:
            found: list[tuple[str, dict]] = []
            channel.basic_qos(prefetch_count=500)
            for method, _properties, body in channel.consume(queue, arguments={"x-stream-offset": "first"},
                                                             inactivity_timeout=idle):
                if method is None:
                    break
                found.append((method.routing_key, json.loads(body)))
                channel.basic_ack(method.delivery_tag)
            channel.cancel()
            return found
        self._channel = None  # a fresh channel: a stream consumer needs its own qos
        return self.retrying(read)

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
