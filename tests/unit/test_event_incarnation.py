"""Each worker process stamps its events with an incarnation of its own, so the sequences of a host's
active worker and its hot standby (one source, two counters) can be told apart."""

from __future__ import annotations

import json

from messages.events import EventType
from messages.topology import Topology
from worker.transport.events import EventPublisher, worker_data
from worker.transport.memory import MemoryLink


def published(link: MemoryLink) -> list[dict]:
    return [json.loads(m.body) for m in link.published]


def test_two_processes_of_one_host_number_their_events_apart():
    links = [MemoryLink(lambda _delivery: None) for _ in range(2)]
    for link in links:
        link.start()
    try:
        publishers = [EventPublisher(link, Topology(prefix="storage", host="kvm-01")) for link in links]
        for _ in range(3):
            for publisher in publishers:
                publisher.emit(EventType.worker_online, worker_data("kvm-01", "qemu:///system"))
        for link in links:
            link.wait(lambda link=link: len(link.published) == 3, timeout=5)
        active, standby = (published(link) for link in links)
    finally:
        for link in links:
            link.close()
    assert {e["source"] for e in active + standby} == {"/storage-worker/kvm-01"}
    assert [e["sequence"] for e in active] == [e["sequence"] for e in standby] == ["1", "2", "3"]
    assert len({e["incarnation"] for e in active}) == 1 and len({e["incarnation"] for e in standby}) == 1
    assert active[0]["incarnation"] != standby[0]["incarnation"]
