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
# results exchange, so the second lost connection ends it.
DIRECT_REPLY_ATTEMPTS = 2


class Outbox:
    def __init__(self, event_buffer: int):
        self._event_buffer = event_buffer
        self._next_tag = 0
        self._unconfirmed: "collections.OrderedDict[int, Outgoing]" = collections.OrderedDict()
        self._results: collections.deque[Outgoing] = collections.deque()
        self._events: collections.deque[Outgoing] = collections.deque()
        self.dropped_events = 0

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

    def take_back_unconfirmed(self) -> None:
        """The channel is gone: what it had not confirmed waits again, at the front, in order."""
        if not self._unconfirmed:
            return
        waiting = [m for m in self._unconfirmed.values() if not _given_up(m)]
        self._unconfirmed.clear()
        self._events.extendleft(reversed([m for m in waiting if m.droppable]))
        self._results.extendleft(reversed([m for m in waiting if not m.droppable]))
        self._trim_events()

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


def _given_up(message: Outgoing) -> bool:
    """A direct reply whose publishes were each followed by a lost connection: dropped (its
    confirm callback runs, so the command settles), never sent again."""
    if message.exchange or not message.routing_key.startswith(DIRECT_REPLY_TO) \
            or message.attempts < DIRECT_REPLY_ATTEMPTS:
        return False
    log.warning("dropping a reply to a direct reply-to address: its publishes ended the broker connection",
                extra={"routing_key": message.routing_key, "attempts": message.attempts})
    if message.on_confirmed is not None:
        message.on_confirmed()
    return True
