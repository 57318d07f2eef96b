"""The AMQP link: one thread owns the pika connection and every channel; nothing else touches them.

Other threads hand work to it with `call_soon` (pika's `add_callback_threadsafe`), so the I/O loop
never waits on libvirt and heartbeats keep flowing during operations of any length.

Two channels per connection:
- the *publish* channel, in confirm mode: every publish gets a delivery tag, and its callback runs
  once the broker confirms it. Publishes made while no channel is open wait in an outbox; publishes
  unconfirmed when a connection is lost go back to the front of the outbox and are sent again.
  On a cluster a channel can stop getting confirms while its connection lives on: RabbitMQ 3.10
  keeps nacking a channel whose publish met a quorum queue without a leader, and a confirm from a
  stream whose member restarted may never come. So after repeated nacks, or a publish left
  unconfirmed for CONFIRM_TIMEOUT, the publish channel alone is replaced and what it had not
  confirmed is sent again on the new one (a copy may reach consumers twice, with the same id).
- the *consume* channel: prefetch, manual acks coalesced per turn of the loop, stale acks dropped
  (worker/transport/consumer.py).

Events wait in a buffer of their own while no channel is open; it is bounded, and events dropped
beyond the bound (oldest first) are counted and logged. Results are never dropped
(worker/transport/outbox.py).

The link reconnects with jittered exponential backoff and re-declares the topology every time.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop
from pika.exceptions import AMQPError
from pika.spec import Basic, BasicProperties

from worker.transport.consumer import Consumer
from worker.transport.outbox import Outbox
from worker.transport.parameters import where
from worker.transport.port import Delivery, Outgoing
from worker.transport.silence import Silence
from worker.transport.topology import Declaration

log = logging.getLogger(__name__)

RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0
STABLE_AFTER = 1.0  # seconds a connection must last before the reconnect backoff starts over
NACKS_BEFORE_NEW_CHANNEL = 5  # nacks in a row after which the publish channel is replaced
CONFIRM_TIMEOUT = 10.0  # seconds a publish may wait for its confirm before the publish channel is replaced
CONFIRM_CHECK_EVERY = 2.0


class TopologyError(RuntimeError):
    """The broker refused the topology (e.g. a queue exists with other arguments): fatal."""


def node_down(reason: Exception) -> bool:
    """A refusal that passes: a queue whose node is down (a cluster starting, a node restarting)
    cannot be declared yet, e.g. "NOT_FOUND - home node 'rabbit@n3' of durable queue 'q' in vhost
    '/' is down or inaccessible"."""
    return "down or inaccessible" in str(getattr(reason, "reply_text", ""))


class AmqpLink:
    def __init__(self, nodes: list[pika.URLParameters], decls: list[Declaration], *, queue: str,
                 prefetch: int, on_delivery: Callable[[Delivery], None], event_buffer: int = 10_000,
                 on_connected: Callable[[], None] | None = None,
                 on_disconnected: Callable[[str], None] | None = None,
                 on_fatal: Callable[[Exception], None] | None = None):
        """`nodes`: the broker nodes to connect to, in the order they are tried (transport.parameters)."""
        self._nodes = nodes
        self._node = 0  # the node connected to, or tried next
        self._declarations = decls
        self._queue = queue
        self._prefetch = prefetch
        self._on_delivery = on_delivery
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_fatal = on_fatal
        self._ioloop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="amqp-io", daemon=True)
        self._connection: pika.SelectConnection | None = None
        self._publish_channel: Any = None
        self._consumer = Consumer(queue, self._ioloop.call_later)
        self._outbox = Outbox(event_buffer)
        self._backoff = RECONNECT_MIN
        self._nacks_in_a_row = 0
        self._replacing = False  # the publish channel is being replaced (closed by us, then opened again)
        self._failures = 0  # connection attempts failed (or connections lost) since the link was last ready
        self._stopping = False
        self._ready = threading.Event()
        self._silence = Silence()
        self._stopped = threading.Event()
        self.blocked = False

    # ---- API for other threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the topology is declared and consuming has begun."""
        return self._ready.wait(timeout)

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def silent_for(self) -> float:
        """Seconds the broker has sent nothing on the current connection (worker/transport/silence.py)."""
        return self._silence.seconds(self._connection)

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._ioloop.add_callback_threadsafe(callback)

    def publish(self, *messages: Outgoing) -> None:
        """Publish in the order given, with one hand-over to the I/O thread for all of them."""
        self.call_soon(lambda: self._publish_all(messages))

    def ack(self, delivery: Delivery) -> None:
        if threading.get_ident() == self._thread.ident:  # a confirm callback: no hand-over needed
            self._consumer.settle(delivery, ack=True)
        else:
            self.call_soon(lambda: self._consumer.settle(delivery, ack=True))

    def requeue(self, delivery: Delivery) -> None:
        """Give a message back to the queue untouched (it was never started)."""
        self.call_soon(lambda: self._consumer.settle(delivery, ack=False))

    def lost(self, delivery: Delivery) -> bool:
        return self._consumer.lost_delivery(delivery)

    def stop_consuming(self) -> None:
        self.call_soon(self._consumer.cancel)

    def pending_publishes(self) -> int:
        return len(self._outbox)

    @property
    def dropped_events(self) -> int:
        return self._outbox.dropped_events

    def close(self, timeout: float = 10.0) -> None:
        """Close after pending publishes are confirmed (or `timeout` passes); stops the thread."""
        self.call_soon(lambda: self._close_when_flushed(timeout))
        self._stopped.wait(timeout + 5)

    # ---- connection lifecycle (I/O thread) ---------------------------------------------------

    def _run(self) -> None:
        self._connect()
        self._ioloop.call_later(CONFIRM_CHECK_EVERY, self._check_confirms)
        try:
            self._ioloop.start()
        finally:
            self._stopped.set()

    def _connect(self) -> None:
        if self._stopping:
            return
        log.info("connecting to the broker", extra={"broker": where(self._nodes[self._node])})
        self._connection = pika.SelectConnection(
            self._nodes[self._node], on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed, custom_ioloop=self._ioloop)
        self._connection.add_on_connection_blocked_callback(self._on_blocked)
        self._connection.add_on_connection_unblocked_callback(self._on_unblocked)

    def _schedule_reconnect(self, what: str, reason: str) -> None:
        """Try the next node: at once while the round of nodes lasts (a cluster with one node down
        still has the others), then with jittered backoff growing with every round that failed."""
        failed = where(self._nodes[self._node])
        self._node = (self._node + 1) % len(self._nodes)
        self._failures += 1
        if self._failures < len(self._nodes):
            delay = 0.0
        else:
            delay = self._backoff * random.uniform(0.5, 1.0)
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        log.warning(f"{what}; trying again", extra={"reason": reason, "broker": failed,
                                                    "next_broker": where(self._nodes[self._node]),
                                                    "delay_s": round(delay, 2)})
        self._ioloop.call_later(delay, self._connect)

    def _on_open_error(self, _connection: Any, error: Exception) -> None:
        self._connection = None
        if self._stopping:
            self._ioloop.stop()
            return
        self._schedule_reconnect("cannot connect to the broker", repr(error))

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_closed(self, _connection: Any, reason: Exception) -> None:
        self._connection = None
        self._lost_channels(f"connection closed: {reason!r}", broker_error=getattr(reason, "reply_code", 0) == 541)
        if self._stopping:
            self._ioloop.stop()
            return
        self._schedule_reconnect("lost the broker connection", repr(reason))

    def _lost_channels(self, reason: str, broker_error: bool = False) -> None:
        """Channels are gone: unconfirmed publishes go back to the outbox, deliveries become stale."""
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._publish_channel = None
        self._replacing = False
        self._consumer.lost()
        self._outbox.take_back_unconfirmed(broker_error)
        if was_ready and self._on_disconnected is not None:
            self._on_disconnected(reason)

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        self.blocked = True
        log.warning("the broker blocked this connection (resource alarm)", extra={"reason": str(frame.method.reason)})

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.blocked = False
        log.info("the broker unblocked this connection")

    # ---- publish channel and topology ---------------------------------------------------------

    def _on_publish_channel_open(self, channel: Any) -> None:
        self._publish_channel = channel
        self._outbox.new_channel()
        channel.add_on_close_callback(self._on_publish_channel_closed)
        channel.confirm_delivery(self._confirms_of(channel),
                                 callback=lambda _frame: self._declare(list(self._declarations)))

    def _confirms_of(self, channel: Any) -> Callable[[Any], None]:
        """The confirm callback of one publish channel: a late confirm of a replaced one is ignored."""
        return lambda frame: self._on_confirm(frame) if channel is self._publish_channel else None

    def _replace_publish_channel(self, why: str, **details: Any) -> None:
        """Close the publish channel alone; `_on_publish_channel_closed` opens the next one."""
        channel = self._publish_channel
        if self._replacing or channel is None or not channel.is_open:
            return
        log.warning(f"{why}; replacing the publish channel", extra=details)
        self._replacing = True
        self._nacks_in_a_row = 0
        channel.close()

    def _on_replacement_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_publish_channel_closed)
        channel.confirm_delivery(self._confirms_of(channel), callback=lambda _frame: self._replaced(channel))

    def _replaced(self, channel: Any) -> None:
        """The new publish channel is in confirm mode: publishing goes on there."""
        self._publish_channel = channel
        self._outbox.new_channel()
        self._replacing = False
        self._flush_outbox()

    def _check_confirms(self) -> None:
        """Every CONFIRM_CHECK_EVERY seconds: a confirm overdue replaces the publish channel."""
        if self._stopping:
            return
        age = self._outbox.oldest_unconfirmed_age()
        if age is not None and age > CONFIRM_TIMEOUT and self._ready.is_set():
            self._replace_publish_channel("a publish waits for the broker's confirm too long",
                                          waited_s=round(age, 1), unconfirmed=self._outbox.unconfirmed)
        self._ioloop.call_later(CONFIRM_CHECK_EVERY, self._check_confirms)

    def _declare(self, remaining: list[Declaration]) -> None:
        if not remaining:
            self._open_consume_channel()
            return
        step, rest = remaining[0], remaining[1:]
        step.apply(self._publish_channel, lambda _frame: self._declare(rest))

    def _on_publish_channel_closed(self, _channel: Any, reason: Exception) -> None:
        if self._connection is None or not self._connection.is_open:
            return
        code = getattr(reason, "reply_code", 0)
        if code in (404, 406) and not self._ready.is_set() and not node_down(reason):
            error = TopologyError(f"the broker refused the topology: {getattr(reason, 'reply_text', reason)}")
            log.error(str(error))
            self._stopping = True
            if self._on_fatal is not None:
                self._on_fatal(error)
            self._connection.close()
            return
        if self._replacing:
            # what the old channel had not confirmed goes out again on the new one
            self._publish_channel = None
            self._outbox.take_back_unconfirmed()
            self._connection.channel(on_open_callback=self._on_replacement_open)
            return
        log.warning("publish channel closed; reopening it", extra={"reason": repr(reason)})
        self._connection.close(320, "reopening after a channel error")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        acked = isinstance(method, Basic.Ack)
        self._nacks_in_a_row = 0 if acked else self._nacks_in_a_row + 1
        for item in self._outbox.confirmed(tag, multiple):
            if acked:
                if item.on_confirmed is not None:
                    item.on_confirmed()
            else:
                log.warning("broker nacked a publish; sending it again",
                            extra={"exchange": item.exchange, "routing_key": item.routing_key})
                self._ioloop.call_later(min(0.1 * 2 ** item.attempts, 5), lambda it=item: self._publish(it))
        if self._nacks_in_a_row >= NACKS_BEFORE_NEW_CHANNEL:
            # RabbitMQ 3.10 can keep nacking every publish of a channel whose first publish to a
            # quorum queue went out while that queue's leader was down; a new channel works at once.
            self._replace_publish_channel("the broker keeps nacking this channel's publishes",
                                          nacks=self._nacks_in_a_row)

    def _publish_all(self, messages: tuple[Outgoing, ...]) -> None:
        for message in messages:
            self._publish(message)

    def _publish(self, message: Outgoing) -> None:
        if self._outbox.dead_reply(message):
            return
        channel = self._publish_channel
        if channel is None or not channel.is_open or not self._ready.is_set():
            self._wait(message)
            return
        try:
            channel.basic_publish(message.exchange, message.routing_key, message.body, message.properties)
        except AMQPError as exc:
            log.warning("publish failed; queued for the next connection", extra={"error": repr(exc)})
            self._wait(message)
            return
        self._outbox.sent(message)

    def _wait(self, message: Outgoing) -> None:
        self._outbox.wait(message)

    def _flush_outbox(self) -> None:
        for message in self._outbox.take_waiting():
            self._publish(message)

    # ---- consume channel ----------------------------------------------------------------------

    def _open_consume_channel(self) -> None:
        assert self._connection is not None
        self._connection.channel(on_open_callback=self._on_consume_channel_open)

    def _on_consume_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_consume_channel_closed)
        channel.basic_qos(prefetch_count=self._prefetch, callback=lambda _frame: self._start_consuming(channel))

    def _start_consuming(self, channel: Any) -> None:
        self._consumer.start(channel, self._on_message)
        connection = self._connection
        # The backoff starts over only once this connection has lasted: one the broker closes at
        # once, again and again (a node that cannot serve a queue yet), must not be retried at full
        # speed, for every lost channel hands the commands in flight back and counts a delivery.
        self._ioloop.call_later(STABLE_AFTER, lambda: self._stable(connection))
        self._ready.set()
        log.info("consuming", extra={"queue": self._queue, "prefetch": self._prefetch})
        self._flush_outbox()
        if self._on_connected is not None:
            self._on_connected()

    def _stable(self, connection: Any) -> None:
        if connection is self._connection and self._ready.is_set():
            self._backoff = RECONNECT_MIN
            self._failures = 0

    def _on_consume_channel_closed(self, channel: Any, reason: Exception) -> None:
        if channel is not self._consumer.channel:
            return
        if self._connection is None or not self._connection.is_open or self._stopping:
            return
        log.warning("consume channel closed; reopening it", extra={"reason": repr(reason)})
        self._consumer.lost()
        self._ready.clear()
        if self._on_disconnected is not None:
            self._on_disconnected(f"consume channel closed: {reason!r}")
        self._open_consume_channel()

    def _on_message(self, _channel: Any, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        self._on_delivery(self._consumer.delivered(method, properties, body))

    # ---- shutdown ------------------------------------------------------------------------------

    def _close_when_flushed(self, timeout: float, waited: float = 0.0) -> None:
        self._consumer.flush_acks()
        pending = self.pending_publishes()
        if pending and waited < timeout and self._connection is not None:
            self._ioloop.call_later(0.05, lambda: self._close_when_flushed(timeout, waited + 0.05))
            return
        if pending:
            log.warning("closing with publishes the broker has not confirmed", extra={"pending": pending})
        # The last confirms may have queued acks (call_soon) that have not run yet: close after them.
        self.call_soon(self._close_now)

    def _close_now(self) -> None:
        self._stopping = True
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        elif self._connection is None:
            self._ioloop.stop()
