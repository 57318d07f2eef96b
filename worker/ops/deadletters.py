"""The operator's view of the dead-letter queue: list what waits there and why, replay one message.

Reading the queue takes every message and puts it back unacknowledged, so listing changes nothing
(a quorum queue keeps their order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika

from messages.topology import Topology
from worker.transport.results import REASON_HEADER


@dataclass(frozen=True)
class DeadLetter:
    message_id: str | None
    command_id: str | None
    routing_key: str
    reason: str
    body: bytes
    properties: Any
    delivery_tag: int


def _reason(properties: Any) -> str:
    headers = properties.headers or {}
    if REASON_HEADER in headers:
        return str(headers[REASON_HEADER])
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        reason = death.get("reason", b"")
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        queue = death.get("queue", b"")
        queue = queue.decode() if isinstance(queue, bytes) else str(queue)
        return f"{reason} (from queue {queue}, {death.get('count', 1)} time(s))"
    return "unknown"


def _command_id(body: bytes) -> str | None:
    import json

    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _original_routing_key(method: Any, properties: Any) -> str:
    deaths = (properties.headers or {}).get("x-death") or []
    if deaths and deaths[0].get("routing-keys"):
        key = deaths[0]["routing-keys"][0]
        return key.decode() if isinstance(key, bytes) else str(key)
    return method.routing_key


class DeadLetters:
    def __init__(self, nodes: list[pika.ConnectionParameters], topology: Topology):
        """`nodes`: the broker nodes, tried in turn (transport.parameters.node_parameters)."""
        self._topology = topology
        self._connection = pika.BlockingConnection(nodes)
        self._channel = self._connection.channel()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def _take_all(self) -> list[DeadLetter]:
        taken = []
        while True:
            method, properties, body = self._channel.basic_get(self._topology.dead_letter_queue, auto_ack=False)
            if method is None:
                return taken
            taken.append(DeadLetter(message_id=properties.message_id, command_id=_command_id(body),
                                    routing_key=_original_routing_key(method, properties), reason=_reason(properties),
                                    body=body, properties=properties, delivery_tag=method.delivery_tag))

    def list(self) -> list[DeadLetter]:
        letters = self._take_all()
        self._put_back(letters)
        return letters

    def replay(self, wanted: str) -> DeadLetter | None:
        """Publish the message whose command id or message id is `wanted` to the commands exchange
        again (with its original routing key) and remove it from the dead-letter queue."""
        letters = self._take_all()
        chosen = next((letter for letter in letters if wanted in (letter.command_id, letter.message_id)), None)
        try:
            if chosen is not None:
                headers = {k: v for k, v in (chosen.properties.headers or {}).items()
                           if k not in ("x-death", "x-first-death-exchange", "x-first-death-queue",
                                        "x-first-death-reason", REASON_HEADER)}
                properties = pika.BasicProperties(content_type=chosen.properties.content_type, delivery_mode=2,
                                                  message_id=chosen.properties.message_id,
                                                  correlation_id=chosen.properties.correlation_id,
                                                  reply_to=chosen.properties.reply_to, headers=headers or None)
                self._channel.confirm_delivery()
                self._channel.basic_publish(self._topology.commands_exchange, chosen.routing_key, chosen.body,
                                            properties)
                self._channel.basic_ack(chosen.delivery_tag)
        finally:
            self._put_back([letter for letter in letters if letter is not chosen])
        return chosen

    def _put_back(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            self._channel.basic_nack(letter.delivery_tag, requeue=True)
