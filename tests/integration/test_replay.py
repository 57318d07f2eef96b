"""The event stream (docs/contract.md "Replaying events") on the real broker with real workers: a
consumer that was stopped gets, with --since, exactly what it missed and then live events, once
each; readers start at offsets and see gaps in a source's sequence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pika
import pytest

from messages.client import NoEventStream, StorageClient
from messages.events import CloudEvent, EventType
from tests.conftest import AMQP_URL, unique
from tests.integration.conftest import call_async, ok, wait_for

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))


def now() -> datetime:
    return datetime.now(timezone.utc)


class Truth:
    """Every event published to the prefix's events exchange from before the workers started, on a
    queue of the test's own: what a consumer should have seen."""

    def __init__(self, prefix: str):
        self._connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self._channel = self._connection.channel()
        exchange = f"{prefix}.events"
        self._channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self._queue = self._channel.queue_declare("", exclusive=True).method.queue
        self._channel.queue_bind(self._queue, exchange, "#")
        self.events: list[dict] = []

    def pull(self) -> list[dict]:
        while True:
            method, _properties, body = self._channel.basic_get(self._queue, auto_ack=True)
            if method is None:
                return self.events
            self.events.append(json.loads(body))

    def ids(self, since: datetime | None = None, until: datetime | None = None) -> set[str]:
        return {e["id"] for e in self.pull()
                if (since is None or CloudEvent.model_validate(e).time >= since)
                and (until is None or CloudEvent.model_validate(e).time < until)}

    def close(self) -> None:
        self._connection.close()


class Follower:
    """`storage-worker events --json …` in a subprocess; a thread collects what it prints."""

    def __init__(self, prefix: str, *args: str):
        self.process = subprocess.Popen([CLI, "events", "--json", "--prefix", prefix, "--amqp-url", AMQP_URL, *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def ids(self) -> list[str]:
        return [e["id"] for e in list(self.events)]

    def wait_for(self, ids: set[str], timeout: float = 30) -> None:
        wait_for(lambda: ids <= set(self.ids()), timeout,
                 f"the follower to print {len(ids - set(self.ids()))} more event(s)")

    def stop(self) -> str:
        """SIGINT, as an operator's Ctrl-C; returns what it printed on stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=15)
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        return self.process.stderr.read()


@pytest.fixture
def fleet(make_worker):
    """Two workers with distinct host ids under one prefix, and the truth of their events."""
    prefix = f"test-{unique('f')}"
    truth = Truth(prefix)
    followers: list[Follower] = []
    try:
        first, second = make_worker(prefix=prefix), make_worker(prefix=prefix)
        yield prefix, first, second, truth, followers
    finally:
        for follower in followers:
            follower.stop()
        truth.close()


def create_volumes(harness, pool: str, tag: str, count: int) -> list[str]:
    client = harness.client()
    names = [f"{tag}-{i}.raw" for i in range(count)]
    for name in names:
        ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": 4096}))
    return names


def volumes_in(events: list[dict]) -> set[str]:
    """Volumes created in the test's pools (the workers also report what other test runs do to their
    pools on this machine's libvirtd)."""
    return {e["data"]["volume"]["name"] for e in events if e["type"] == "storage.volume.created"
            and e["data"]["volume"]["name"].startswith(("before-", "missed-", "live-"))}


def test_a_stopped_consumer_started_with_since_gets_exactly_what_it_missed_then_live_events(fleet):
    prefix, one, two, truth, followers = fleet
    began = now()
    pools = {h.host: h.running_pool(h.client()) for h in (one, two)}
    for harness in (one, two):
        create_volumes(harness, pools[harness.host], "before", 1)

    first = Follower(prefix, "--since", began.isoformat())
    followers.append(first)
    wait_for(lambda: volumes_in(truth.pull()) >= {"before-0.raw"}, 30, "the first changes")
    first.wait_for(truth.ids(since=began))
    first.stop()
    stopped = now()

    # Changes on both hosts while nobody listens.
    for harness in (one, two):
        create_volumes(harness, pools[harness.host], f"missed-{harness.host}", 3)
    wait_for(lambda: len([n for n in volumes_in(truth.pull()) if n.startswith("missed-")]) == 6, 30,
             "the missed changes to be published")
    missed = truth.ids(since=stopped)

    second = Follower(prefix, "--since", stopped.isoformat())
    followers.append(second)
    # Live changes on both hosts at once, while the follower attaches and replays: the seam.
    threads = [call_async(h.client, "volume.create", {"pool": pools[h.host], "name": f"live-{h.host}-{i}.raw",
                                                      "capacity": 4096})
               for h in (one, two) for i in range(3)]
    for thread, results in threads:
        thread.join(timeout=60)
        ok(results[0])
    wait_for(lambda: len([n for n in volumes_in(truth.pull()) if n.startswith("live-")]) == 6, 30,
             "the live changes to be published")
    after = truth.ids(since=stopped)
    second.wait_for(after)
    second.stop()

    # The workers also publish what other test runs do to this machine's libvirtd meanwhile: compare
    # with everything the truth holds once the follower has stopped, host by host (the broker keeps
    # each publisher's order in every queue, not the order between publishers).
    printed = second.events
    since_stop = [e for e in truth.pull() if CloudEvent.model_validate(e).time >= stopped]
    assert len(printed) == len({e["id"] for e in printed}), "an event printed twice"
    assert {e["id"] for e in printed} >= after, "an event since the stop is missing"
    for host in (one.host, two.host):
        mine = [e["id"] for e in printed if e["host"] == host]
        published = [e["id"] for e in since_stop if e["host"] == host]
        assert mine == published[:len(mine)], f"{host}: not exactly its events since the stop, in order"
    order = [e["id"] for e in printed]
    live = [order.index(e["id"]) for e in printed if e["type"] == "storage.volume.created"
            and e["data"]["volume"]["name"].startswith("live-")]
    assert max(order.index(i) for i in missed) < min(live), "the missed events first, then the live ones"
    assert not set(first.ids()) & set(order), "nothing the first consumer had came again"
    assert volumes_in(printed) == {f"{kind}-{h.host}-{i}.raw" for kind in ("missed", "live")
                                   for h in (one, two) for i in range(3)}
    for host in (one.host, two.host):  # each host's events in publish order, without holes
        sequences = [int(e["sequence"]) for e in printed if e["host"] == host]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences


def fake_event(host: str, sequence: int, **extra) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=f"/storage-worker/{host}", type=EventType.pool_refreshed,
                      time=now(), host=host, sequence=str(sequence), data={}, **extra)


def publish(prefix: str, *events: CloudEvent) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for event in events:
            channel.basic_publish(f"{prefix}.events", event.routing_key(), event.model_dump_json().encode(),
                                  pika.BasicProperties(delivery_mode=2, message_id=event.id))
    finally:
        connection.close()


def test_readers_start_at_offsets_and_hear_of_gaps(make_worker):
    harness = make_worker()
    prefix = harness.settings.prefix
    host = f"fake-{uuid.uuid4().hex[:6]}"
    sent = [fake_event(host, n) for n in (1, 2, 5, 3, 4, 6)]  # 3 and 4 late: a gap, then filled
    publish(prefix, *sent)
    client = StorageClient(AMQP_URL, prefix=prefix)
    try:
        everything = list(client.follow_events(f"{host}.#", offset="first", idle_timeout=2))
        assert [e.id for e in everything] == [e.id for e in sent], "in the order the broker received them"

        offsets: dict[str, int] = {}
        gaps = []
        subscription = client.on_events(lambda event, offset: offsets.setdefault(event.id, offset), f"{host}.#",
                                        offset="first", on_gap=gaps.append)
        wait_for(lambda: client.pump(0.1) or len(offsets) == len(sent), 10, "every event with its offset")
        subscription.close()
        assert [str(g) for g in gaps] == [f"{host}: 2 event(s) missing (#3-#4)"]
        assert list(offsets.values()) == sorted(offsets.values())

        resumed = list(client.follow_events(f"{host}.#", offset=offsets[sent[3].id], idle_timeout=2))
        assert [e.id for e in resumed] == [e.id for e in sent[3:]]

        # A restarted process counts from 1 again: no gap. The pattern filters after the gap check.
        restarted = [fake_event(host, 1), fake_event(host, 2)]
        publish(prefix, *restarted)
        gaps.clear()
        recent = list(client.follow_events(f"{host}.pool.refreshed", since=timedelta(minutes=5), idle_timeout=2,
                                           on_gap=gaps.append))
        assert [e.id for e in recent] == [e.id for e in sent + restarted]
        assert [str(g) for g in gaps] == [f"{host}: 2 event(s) missing (#3-#4)"], "the restart is none"
        # A time after everything sent: nothing (the worker's own events do not match the pattern).
        assert list(client.follow_events(f"{host}.#", since=now(), idle_timeout=1.5)) == []
    finally:
        client.close()


def test_replay_without_a_stream_names_it(broker_ok):
    prefix = f"test-{unique('n')}"
    with StorageClient(AMQP_URL, prefix=prefix) as client:
        with pytest.raises(NoEventStream, match=f"'{prefix}.events.stream' does not exist"):
            next(client.follow_events(since=timedelta(minutes=1), idle_timeout=1))
    done = subprocess.run([CLI, "events", "--from", "first", "--prefix", prefix, "--amqp-url", AMQP_URL],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and f"'{prefix}.events.stream' does not exist" in done.stderr
