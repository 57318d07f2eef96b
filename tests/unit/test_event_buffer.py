"""The outbox's event buffer while no channel is open: bounded, oldest dropped first, counted;
results are never dropped and go out first; the age of the oldest unconfirmed publish (the link
replaces a publish channel whose confirms stop coming)."""

from __future__ import annotations

import time

import pika
import pika.exceptions

from worker.transport.link import node_down
from worker.transport.outbox import Outbox
from worker.transport.port import Outgoing


def message(name: str, droppable: bool) -> Outgoing:
    return Outgoing("ex", name, name.encode(), pika.BasicProperties(), droppable=droppable)


def test_events_beyond_the_bound_are_dropped_oldest_first_and_counted():
    outbox = Outbox(event_buffer=3)
    for index in range(5):
        outbox.wait(message(f"event-{index}", droppable=True))
    assert outbox.dropped_events == 2
    assert [m.routing_key for m in outbox.take_waiting()] == ["event-2", "event-3", "event-4"]


def test_results_are_never_dropped_and_go_out_before_events():
    outbox = Outbox(event_buffer=1)
    for index in range(3):
        outbox.wait(message(f"event-{index}", droppable=True))
        outbox.wait(message(f"result-{index}", droppable=False))
    assert outbox.dropped_events == 2
    assert len(outbox) == 4
    assert [m.routing_key for m in outbox.take_waiting()] == ["result-0", "result-1", "result-2", "event-2"]


def test_unconfirmed_publishes_of_a_lost_channel_wait_again_in_front_in_order():
    outbox = Outbox(event_buffer=10)
    for name in ("result-0", "event-0", "result-1"):
        outbox.sent(message(name, droppable=name.startswith("event")))
    outbox.wait(message("result-2", droppable=False))
    assert [m.routing_key for m in outbox.confirmed(1, multiple=False)] == ["result-0"]
    outbox.take_back_unconfirmed()
    assert [m.routing_key for m in outbox.take_waiting()] == ["result-1", "result-2", "event-0"]


def test_a_multiple_confirm_settles_every_publish_up_to_its_tag():
    outbox = Outbox(event_buffer=10)
    outbox.new_channel()
    for name in ("a", "b", "c"):
        outbox.sent(message(name, droppable=False))
    assert [m.routing_key for m in outbox.confirmed(2, multiple=True)] == ["a", "b"]
    assert len(outbox) == 1


def test_the_oldest_unconfirmed_publish_tells_how_long_a_confirm_is_overdue(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    outbox = Outbox(event_buffer=10)
    assert outbox.oldest_unconfirmed_age() is None
    outbox.sent(message("a", droppable=False))
    clock[0] += 4
    outbox.sent(message("b", droppable=True))
    clock[0] += 7
    assert outbox.oldest_unconfirmed_age() == 11 and outbox.unconfirmed == 2
    outbox.confirmed(1, multiple=False)
    assert outbox.oldest_unconfirmed_age() == 7


def test_a_queue_on_a_node_that_is_down_is_no_refused_topology():
    refused = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'")
    down = pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - home node 'rabbit@n3' of durable queue "
                                                      "'storage.events.stream' in vhost '/' is down or inaccessible")
    assert not node_down(refused)
    assert node_down(down)


def test_a_direct_reply_that_ended_the_connection_twice_is_dropped_and_settled():
    confirmed = []
    outbox = Outbox(event_buffer=10)
    reply = Outgoing("", "amq.rabbitmq.reply-to.g1h2AA.abc", b"{}", pika.BasicProperties(),
                     on_confirmed=lambda: confirmed.append("reply"))
    result = Outgoing("storage.results", "kvm-01.volume.info.succeeded", b"{}", pika.BasicProperties())
    for attempt in (1, 2):
        outbox.new_channel()
        outbox.sent(reply)
        outbox.sent(result)
        outbox.take_back_unconfirmed()
        waiting = outbox.take_waiting()
        if attempt == 1:
            assert [m.routing_key for m in waiting] == [reply.routing_key, result.routing_key]
            assert confirmed == []
    assert [m.routing_key for m in waiting] == [result.routing_key], "the results exchange copy still goes out"
    assert confirmed == ["reply"], "the command settles without it"


def test_a_direct_reply_unconfirmed_at_an_internal_error_is_given_up_with_its_address():
    confirmed = []
    outbox = Outbox(event_buffer=10)
    address = "amq.rabbitmq.reply-to.g1h2AA.dead"

    def reply(name: str) -> Outgoing:
        return Outgoing("", address, b"{}", pika.BasicProperties(), on_confirmed=lambda: confirmed.append(name))

    outbox.new_channel()
    outbox.sent(reply("first"))
    outbox.take_back_unconfirmed(broker_error=True)
    assert outbox.take_waiting() == [] and confirmed == ["first"]
    assert outbox.dead_reply(reply("answer to a redelivery")), "later replies to that address are not sent"
    assert confirmed == ["first", "answer to a redelivery"]
    other = Outgoing("", "amq.rabbitmq.reply-to.g1h2AA.alive", b"{}", pika.BasicProperties())
    assert not outbox.dead_reply(other)
