"""The link's event buffer while no channel is open: bounded, oldest dropped first, counted;
results are never dropped."""

from __future__ import annotations

import pika

from worker.transport.link import AmqpLink
from worker.transport.port import Outgoing


def message(name: str, droppable: bool) -> Outgoing:
    return Outgoing("ex", name, name.encode(), pika.BasicProperties(), droppable=droppable)


def make_link(buffer: int) -> AmqpLink:
    return AmqpLink(pika.URLParameters("amqp://guest:guest@127.0.0.1:1/%2F"), [], queue="q", prefetch=1,
                    on_delivery=lambda _d: None, event_buffer=buffer)


def test_events_beyond_the_bound_are_dropped_oldest_first_and_counted():
    link = make_link(buffer=3)
    for index in range(5):
        link._publish(message(f"event-{index}", droppable=True))  # no channel: everything waits
    assert link.dropped_events == 2
    assert [m.routing_key for m in link._event_outbox] == ["event-2", "event-3", "event-4"]


def test_results_are_never_dropped_and_go_out_before_events():
    link = make_link(buffer=1)
    for index in range(3):
        link._publish(message(f"event-{index}", droppable=True))
        link._publish(message(f"result-{index}", droppable=False))
    assert link.dropped_events == 2
    assert link.pending_publishes() == 4
    sent = []
    link._publish = lambda m: sent.append(m.routing_key)  # what a flush hands to the channel, in order
    link._flush_outbox()
    assert sent == ["result-0", "result-1", "result-2", "event-2"]
