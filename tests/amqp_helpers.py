"""What the test workloads (fault tests, cluster tests, the soak) do on the broker alike: declare the
worker's exchanges from their side, and retry through a broker that drops them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika.exceptions

from messages.topology import Topology

#: what a connection to a broker that goes away or restarts raises
CONNECTION_TROUBLE = (pika.exceptions.AMQPError, OSError)


def declare_exchanges(channel: Any, prefix: str) -> Topology:
    """Test workloads bind their queues and publish before the worker under test may have declared
    its topology (same names and kinds as the worker's, so either side may declare first). Declare the commands (direct), results and events (topic) exchanges of `prefix`; the names."""
    names = Topology(prefix=prefix, host="")
    for exchange, kind in ((names.commands_exchange, "direct"), (names.results_exchange, "topic"),
                           (names.events_exchange, "topic")):
        channel.exchange_declare(exchange, exchange_type=kind, durable=True)
    return names


def retrying(action: Callable[[Any], Any], channel: Callable[[], Any], drop: Callable[[], None],
             timeout: float, pause: float) -> Any:
    """`action(channel())` until it goes through: on connection trouble `drop()` the connection and
    try again after `pause` seconds, for up to `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        try:
            return action(channel())
        except CONNECTION_TROUBLE:
            drop()
            if time.monotonic() > end:
                raise
            time.sleep(pause)
