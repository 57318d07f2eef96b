"""What the link has to publish and what the broker has not confirmed yet (on the I/O thread only).

Publishes made while no channel is open wait here; those unconfirmed when a connection is lost come
back to the front and are sent again. Results are never dropped. Events wait in a buffer of their
own: it is bounded, and events dropped beyond the bound (oldest first) are counted and logged.
When a channel opens, results go out first, then events oldest first (their sequence order).
"""

from __future__ import annotations

import collections
import logging
import time

from worker.transport.port import Outgoing

log = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to."
# Publishes of a reply to a direct reply-to address before it is given up. RabbitMQ 3.10 closes the
# whole connection (541 INTERNAL_ERROR) on a reply to a requester whose channel was on a node that
# died, and the same reply sent again after the reconnect closes it again: a loop that also spends
# the delivery count of every command in flight. That requester is gone, and the result is on the
# results exchange: a direct reply unconfirmed when the broker closes the connection with an
# internal error, or twice lost with the connection, is given up, and so is every later reply to
# the same address (a redelivered command answered again).
DIRECT_REPLY_ATTEMPTS = 2
DEAD_REPLY_ADDRESSES = 10_000  # addresses given up that are remembered


class Outbox:
    def __init__(self, event_buffer: int):
        self._event_buffer = event_buffer
        self._next_tag = 0
        self._unconfirmed: "collections.OrderedDict[int, Outgoing]" = collections.OrderedDict()
        self._results: collections.deque[Outgoing] = collections.deque()
        self._events: collections.deque[Outgoing] = collections.deque()
        self.dropped_events = 0
        self._dead_replies: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        """Publishes waiting or unconfirmed."""
        return len(self._unconfirmed) + len(self._results) + len(self._events)

    def new_channel(self) -> None:
        """A new publish channel numbers its publishes from 1."""
        self._next_tag = 0

    def sent(self, message: Outgoing) -> None:
        """`message` went out on the publish channel; its confirm is awaited."""
        message.attempts += 1
        message.sent_at = time.monotonic()
        self._next_tag += 1
        self._unconfirmed[self._next_tag] = message

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def oldest_unconfirmed_age(self) -> float | None:
        """Seconds the oldest publish has waited for its confirm; None when none waits."""
        if not self._unconfirmed:
            return None
        return time.monotonic() - next(iter(self._unconfirmed.values())).sent_at

    def confirmed(self, tag: int, multiple: bool) -> list[Outgoing]:
        """The publishes a broker confirm (ack or nack) settles, in publish order."""
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        return [message for t in tags if (message := self._unconfirmed.pop(t, None)) is not None]

    def wait(self, message: Outgoing) -> None:
        """Keep a publish until a channel is open."""
        if message.droppable:
            self._events.append(message)
            self._trim_events()
        else:
            self._results.append(message)

    def take_back_unconfirmed(self, broker_error: bool = False) -> None:
        """The channel is gone: what it had not confirmed waits again, at the front, in order.
        `broker_error`: the broker closed the connection with an internal error."""
        if not self._unconfirmed:
            return
        waiting = [m for m in self._unconfirmed.values() if not self._give_up(m, broker_error)]
        self._unconfirmed.clear()
        self._events.extendleft(reversed([m for m in waiting if m.droppable]))
        self._results.extendleft(reversed([m for m in waiting if not m.droppable]))
        self._trim_events()

    def dead_reply(self, message: Outgoing) -> bool:
        """A reply to an address given up: settled at once (its confirm callback runs), not sent."""
        if message.exchange or message.routing_key not in self._dead_replies:
            return False
        log.info("not sending a reply to a direct reply-to address given up",
                 extra={"routing_key": message.routing_key})
        if message.on_confirmed is not None:
            message.on_confirmed()
        return True

    def _give_up(self, message: Outgoing, broker_error: bool) -> bool:
        if message.exchange or not message.routing_key.startswith(DIRECT_REPLY_TO):
            return False
        if not broker_error and message.attempts < DIRECT_REPLY_ATTEMPTS \
                and message.routing_key not in self._dead_replies:
            return False
        log.warning("dropping a reply to a direct reply-to address: its publish ended the broker connection",
                    extra={"routing_key": message.routing_key, "attempts": message.attempts})
        self._dead_replies[message.routing_key] = None
        while len(self._dead_replies) > DEAD_REPLY_ADDRESSES:
            self._dead_replies.popitem(last=False)
        if message.on_confirmed is not None:
            message.on_confirmed()
        return True

    def take_waiting(self) -> list[Outgoing]:
        """Everything waiting, to send now: results first, then events oldest first."""
        waiting = list(self._results) + list(self._events)
        self._results.clear()
        self._events.clear()
        return waiting

    def _trim_events(self) -> None:
        while len(self._events) > self._event_buffer:
            self._events.popleft()
            self.dropped_events += 1
            if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                log.warning("event buffer full while the broker is unreachable; dropping the oldest events",
                            extra={"dropped_total": self.dropped_events, "buffer": self._event_buffer})

