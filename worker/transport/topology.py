"""What the worker declares on the broker (docs/contract.md "Topology"), as data, applied idempotently at
every (re)connect. The names come from `messages.topology`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from messages.topology import Topology


@dataclass(frozen=True)
class Declaration:
    kind: Literal["exchange", "queue", "bind"]
    name: str
    exchange_type: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    routing_key: str = ""

    def apply(self, channel: Any, callback: Callable[[Any], None]) -> None:
        if self.kind == "exchange":
            channel.exchange_declare(self.name, exchange_type=self.exchange_type, durable=True, callback=callback)
        elif self.kind == "queue":
            channel.queue_declare(self.name, durable=True, arguments=self.arguments or None, callback=callback)
        else:
            channel.queue_bind(self.name, self.source, routing_key=self.routing_key, callback=callback)


def command_queue_arguments(topology: Topology, queue_type: str, delivery_limit: int,
                            single_active_consumer: bool, quorum_group_size: int | None = None) -> dict[str, Any]:
    arguments: dict[str, Any] = {**dead_queue_arguments(queue_type, quorum_group_size),
                                 "x-dead-letter-exchange": topology.dead_letter_exchange}
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = delivery_limit
    if single_active_consumer:
        arguments["x-single-active-consumer"] = True
    return arguments


def dead_queue_arguments(queue_type: str, quorum_group_size: int | None = None) -> dict[str, Any]:
    """A quorum queue has a member on every node of the cluster unless QUORUM_GROUP_SIZE says fewer."""
    arguments: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum" and quorum_group_size is not None:
        arguments["x-quorum-initial-group-size"] = quorum_group_size
    return arguments


def event_stream_arguments(max_age: str, max_bytes: int) -> dict[str, Any]:
    """The event stream's arguments. RabbitMQ applies retention by removing whole segment files
    (500 MB each by default) when a new one starts, so the stream holds somewhat more than either
    limit says."""
    return {"x-queue-type": "stream", "x-max-age": max_age, "x-max-length-bytes": max_bytes}


def declarations(topology: Topology, *, queue_type: str = "quorum", delivery_limit: int = 5,
                 single_active_consumer: bool = True, quorum_group_size: int | None = None,
                 event_stream_max_age: str = "7D", event_stream_max_bytes: int = 2**30) -> list[Declaration]:
    queue = topology.command_queue
    return [
        Declaration("exchange", topology.commands_exchange, "direct"),
        Declaration("exchange", topology.results_exchange, "topic"),
        Declaration("exchange", topology.events_exchange, "topic"),
        Declaration("exchange", topology.dead_letter_exchange, "topic"),
        Declaration("queue", topology.dead_letter_queue, arguments=dead_queue_arguments(queue_type, quorum_group_size)),
        Declaration("bind", topology.dead_letter_queue, source=topology.dead_letter_exchange, routing_key="#"),
        Declaration("queue", topology.event_stream,
                    arguments=event_stream_arguments(event_stream_max_age, event_stream_max_bytes)),
        Declaration("bind", topology.event_stream, source=topology.events_exchange, routing_key="#"),
        Declaration("queue", queue, arguments=command_queue_arguments(
            topology, queue_type, delivery_limit, single_active_consumer, quorum_group_size)),
        Declaration("bind", queue, source=topology.commands_exchange, routing_key=topology.command_routing_key),
    ]
