"""The link's consume channel (on the I/O thread only): deliveries in, acknowledgements out.

Each delivery remembers the channel generation it came from; once that channel is gone its
deliveries can no longer be settled, so an ack for an older generation is dropped (the broker
redelivers that message, and the journal answers it), never sent with a stale delivery tag. Acks
asked for during one turn of the I/O loop go out together at its end (worker/transport/acks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pika.spec import Basic, BasicProperties

from worker.transport.acks import AckBatcher
from worker.transport.port import Delivery

log = logging.getLogger(__name__)


class Consumer:
    def __init__(self, queue: str, call_later: Callable[[float, Callable[[], None]], Any]):
        self._queue = queue
        self._call_later = call_later
        self.channel: Any = None
        self._tag: str | None = None
        self._wanted = True  # false once consuming was cancelled (drain): a new channel does not consume
        self._generation = 0
        self._acks = AckBatcher()
        self._flush_scheduled = False

    def start(self, channel: Any, on_message: Callable[[Any, Basic.Deliver, BasicProperties, bytes], None]) -> None:
        self.channel = channel
        if self._wanted:
            self._tag = channel.basic_consume(self._queue, on_message, auto_ack=False)

    def lost(self) -> None:
        """The channel is gone: its deliveries can no longer be settled."""
        self.channel = None
        self._tag = None
        self._generation += 1
        self._acks = AckBatcher()

    def lost_delivery(self, delivery: Delivery) -> bool:
        """Whether `delivery` came by a channel that is gone (read from any thread: one int)."""
        return delivery.generation != self._generation

    def delivered(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> Delivery:
        self._acks.delivered(method.delivery_tag)
        return Delivery(generation=self._generation, delivery_tag=method.delivery_tag,
                        redelivered=bool(method.redelivered), routing_key=method.routing_key,
                        properties=properties, body=body)

    def settle(self, delivery: Delivery, *, ack: bool) -> None:
        channel = self.channel
        if delivery.generation != self._generation or channel is None or not channel.is_open:
            log.info("not settling a delivery from a closed channel; the broker redelivers it",
                     extra={"delivery_tag": delivery.delivery_tag})
            return
        if ack:
            self._acks.ack(delivery.delivery_tag)
            if not self._flush_scheduled:  # at the end of this turn of the loop
                self._flush_scheduled = True
                self._call_later(0, self.flush_acks)
        else:
            self._acks.nacked(delivery.delivery_tag)
            channel.basic_nack(delivery.delivery_tag, requeue=True)

    def flush_acks(self) -> None:
        self._flush_scheduled = False
        channel = self.channel
        if channel is None or not channel.is_open:
            return
        for tag, multiple in self._acks.flush():
            channel.basic_ack(tag, multiple=multiple)

    def cancel(self) -> None:
        """Stop consuming, for good (a drain)."""
        self._wanted = False
        channel, tag = self.channel, self._tag
        if channel is not None and channel.is_open and tag is not None:
            channel.basic_cancel(tag)
        self._tag = None
