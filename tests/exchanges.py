"""The worker's three public exchanges, declared from a test's side: test workloads bind their queues
and publish before the worker under test may have declared them (same names and kinds as the
worker's topology, so either side may declare first)."""

from __future__ import annotations

from typing import Any

from messages.topology import Topology


def declare_exchanges(channel: Any, prefix: str) -> Topology:
    """Declare the commands (direct), results and events (topic) exchanges of `prefix`; the names."""
    names = Topology(prefix=prefix, host="")
    for exchange, kind in ((names.commands_exchange, "direct"), (names.results_exchange, "topic"),
                           (names.events_exchange, "topic")):
        channel.exchange_declare(exchange, exchange_type=kind, durable=True)
    return names
