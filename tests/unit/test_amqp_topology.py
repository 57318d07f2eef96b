"""worker.transport.topology.declarations: what the worker declares on the broker (docs/contract.md
"Topology")."""

from __future__ import annotations

import pytest

from messages.topology import Topology
from worker.transport.topology import Declaration, declarations


def by_kind(decls: list[Declaration], kind: str) -> dict[str, Declaration]:
    return {d.name: d for d in decls if d.kind == kind}


def binds(decls: list[Declaration]) -> set[tuple[str, str, str]]:
    return {(d.name, d.source, d.routing_key) for d in decls if d.kind == "bind"}


def test_names_come_from_prefix_and_host():
    decls = declarations(Topology(prefix="st1", host="kvm-01"))
    exchanges = by_kind(decls, "exchange")
    assert {name: d.exchange_type for name, d in exchanges.items()} == {
        "st1.commands": "direct", "st1.results": "topic", "st1.events": "topic", "st1.dlx": "topic"}
    assert set(by_kind(decls, "queue")) == {"st1.commands.kvm-01", "st1.dead", "st1.events.stream"}
    assert binds(decls) == {("st1.commands.kvm-01", "st1.commands", "kvm-01"), ("st1.dead", "st1.dlx", "#"),
                            ("st1.events.stream", "st1.events", "#")}


def test_default_names_match_the_contract():
    decls = declarations(Topology(prefix="storage", host="kvm-01"))
    assert set(by_kind(decls, "exchange")) == {"storage.commands", "storage.results", "storage.events",
                                               "storage.dlx"}
    assert set(by_kind(decls, "queue")) == {"storage.commands.kvm-01", "storage.dead", "storage.events.stream"}


def test_exchanges_are_declared_before_the_queues_and_bindings_that_use_them():
    decls = declarations(Topology(prefix="p", host="h"))
    seen: set[str] = set()
    for d in decls:
        if d.kind == "bind":
            assert d.name in seen and d.source in seen, f"{d} before what it binds"
        seen.add(d.name)


def test_quorum_command_queue_arguments():
    queue = by_kind(declarations(Topology("storage", "kvm-01"), queue_type="quorum", delivery_limit=7,
                                 single_active_consumer=True), "queue")["storage.commands.kvm-01"]
    assert queue.arguments == {"x-queue-type": "quorum", "x-dead-letter-exchange": "storage.dlx",
                               "x-delivery-limit": 7, "x-single-active-consumer": True}


def test_classic_command_queue_has_no_delivery_limit():
    queue = by_kind(declarations(Topology("st", "h"), queue_type="classic", single_active_consumer=False),
                    "queue")["st.commands.h"]
    assert queue.arguments == {"x-queue-type": "classic", "x-dead-letter-exchange": "st.dlx"}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_dead_letter_queue_follows_the_queue_type(queue_type):
    dead = by_kind(declarations(Topology("st", "h"), queue_type=queue_type), "queue")["st.dead"]
    assert dead.arguments["x-queue-type"] == queue_type
    assert "x-dead-letter-exchange" not in dead.arguments  # dead letters stop here


def test_the_event_stream_is_a_stream_with_retention_whatever_the_queue_type():
    for queue_type in ("quorum", "classic"):
        stream = by_kind(declarations(Topology("st", "h"), queue_type=queue_type), "queue")["st.events.stream"]
        assert stream.arguments == {"x-queue-type": "stream", "x-max-age": "7D", "x-max-length-bytes": 2**30}
    stream = by_kind(declarations(Topology("st", "h"), event_stream_max_age="12h", event_stream_max_bytes=5000),
                     "queue")["st.events.stream"]
    assert stream.arguments == {"x-queue-type": "stream", "x-max-age": "12h", "x-max-length-bytes": 5000}


class RecordingChannel:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def exchange_declare(self, name, **kw):
        self.calls.append(("exchange", name, kw["exchange_type"], kw["durable"]))

    def queue_declare(self, name, **kw):
        self.calls.append(("queue", name, kw["arguments"], kw["durable"]))

    def queue_bind(self, queue, exchange, **kw):
        self.calls.append(("bind", queue, exchange, kw["routing_key"]))


def test_apply_declares_everything_durable():
    channel = RecordingChannel()
    for d in declarations(Topology("st", "h"), queue_type="classic", single_active_consumer=False):
        d.apply(channel, callback=lambda frame: None)
    assert ("exchange", "st.commands", "direct", True) in channel.calls
    assert ("queue", "st.commands.h", {"x-queue-type": "classic", "x-dead-letter-exchange": "st.dlx"},
            True) in channel.calls
    assert ("bind", "st.dead", "st.dlx", "#") in channel.calls
    assert all(call[-1] is True for call in channel.calls if call[0] in ("exchange", "queue"))
