"""What the rest of the worker needs of a transport: messages in, messages out, settled.

`AmqpLink` (worker/transport/link.py) is the real one, over RabbitMQ; `MemoryLink`
(worker/transport/memory.py) runs the same command path in memory for fast tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pika.spec import BasicProperties


@dataclass(frozen=True)
class Delivery:
    """A received message, with what is needed to ack it on the channel it came from."""

    generation: int
    delivery_tag: int
    redelivered: bool
    routing_key: str
    properties: BasicProperties
    body: bytes


@dataclass
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    properties: BasicProperties
    on_confirmed: Callable[[], None] | None = None
    droppable: bool = False  # an event: may be dropped (and counted) when the buffer overflows
    attempts: int = field(default=0)
    sent_at: float = field(default=0.0)  # time.monotonic() of its last publish


class Link(Protocol):
    """A transport: deliveries reach the `on_delivery` callback it was built with; these calls may
    come from any thread."""

    def publish(self, *messages: Outgoing) -> None:
        """Publish in the order given; each message's `on_confirmed` runs once the broker has it."""

    def ack(self, delivery: Delivery) -> None:
        """The delivery is done with: the broker forgets it."""

    def requeue(self, delivery: Delivery) -> None:
        """Give a message back to the queue untouched (it was never started)."""

    def lost(self, delivery: Delivery) -> bool:
        """The channel it came by is gone: the broker has given the message back to the queue."""
