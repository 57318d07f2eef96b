"""Events (docs/contract.md "Events") from real pool and volume operations, from changes made with virsh
behind the worker's back, from capacity, and from libvirtd going away and coming back."""

from __future__ import annotations

import json
import subprocess
import time

import pika
import pytest
from cloudevents.core.formats.json import JSONFormat

from tests.conftest import AMQP_URL
from tests.integration.conftest import ok, wait_for
from tests.integration.test_libvirt_reconnect import start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration

MiB = 2**20


class EventStream:
    """Every event of one worker, from its first, on a queue bound before the worker starts."""

    def __init__(self, prefix: str, host: str):
        self._connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self._channel = self._connection.channel()
        exchange = f"{prefix}.events"
        self._channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self._queue = self._channel.queue_declare("", exclusive=True).method.queue
        self._channel.queue_bind(self._queue, exchange, f"{host}.#")
        self.seen: list[tuple[pika.spec.Basic.GetOk, pika.BasicProperties, dict]] = []

    def pull(self) -> None:
        while True:
            method, properties, body = self._channel.basic_get(self._queue, auto_ack=True)
            if method is None:
                return
            self.seen.append((method, properties, json.loads(body)))

    def events(self, kind: str | None = None) -> list[dict]:
        self.pull()
        return [body for _, _, body in self.seen if kind is None or body["type"] == kind]

    def wait(self, predicate, timeout: float, what: str) -> list[dict]:
        def found():
            self._connection.process_data_events(time_limit=0.05)
            matches = [e for e in self.events() if predicate(e)]
            return matches or None
        return wait_for(found, timeout, what)

    def close(self) -> None:
        self._connection.close()


@pytest.fixture
def watched(make_worker):
    """A worker whose every event is captured from its first; fast re-listing."""
    streams = []

    def make(**overrides):
        from tests.conftest import unique

        tag = unique("t")
        stream = EventStream(f"test-{tag}", tag)
        streams.append(stream)
        harness = make_worker(host_id=tag, prefix=f"test-{tag}", reconcile_interval=1.0, **overrides)
        return harness, stream

    yield make
    for stream in streams:
        stream.close()


def by_type(events: list[dict], kind: str, **data) -> list[dict]:
    return [e for e in events if e["type"] == kind and all(e["data"].get(k) == v for k, v in data.items())]


def test_pool_lifecycle_events_carry_the_pool_and_the_command(watched):
    harness, stream = watched()
    client = harness.client()
    name = harness.name("pool")
    define = client.call("pool.define", {"name": name, "type": "dir", "target": {"path": str(harness.root / name)},
                                         "build": True, "start": True}, command_id="define-1")
    ok(define)
    refresh = ok(client.call("pool.refresh", {"name": name}, command_id="refresh-1"))
    ok(client.call("pool.stop", {"name": name}, command_id="stop-1"))
    ok(client.call("pool.delete", {"name": name}, command_id="delete-1"))
    ok(client.call("pool.undefine", {"name": name}, command_id="undefine-1"))
    expected = [("storage.pool.defined", "define-1"), ("storage.pool.built", "define-1"),
                ("storage.pool.started", "define-1"), ("storage.pool.refreshed", "refresh-1"),
                ("storage.pool.stopped", "stop-1"), ("storage.pool.deleted", "delete-1"),
                ("storage.pool.undefined", "undefine-1")]
    stream.wait(lambda e: e["type"] == "storage.pool.undefined" and e["subject"] == f"pools/{name}", 10,
                "the undefined event")  # libvirtd is shared: other pools come and go meanwhile
    pool_events = [(e["type"], e.get("commandid")) for e in stream.events() if e["subject"] == f"pools/{name}"
                   and e["type"].startswith("storage.pool.") and ".capacity." not in e["type"]]
    assert pool_events == expected
    undefined = [e for e in by_type(stream.events(), "storage.pool.undefined") if e["subject"] == f"pools/{name}"][0]
    assert undefined["data"]["pool"]["name"] == name and undefined["data"]["pool"]["uuid"] == refresh["uuid"]
    started = [e for e in by_type(stream.events(), "storage.pool.started") if e["subject"] == f"pools/{name}"][0]
    assert started["data"]["pool"]["state"] == "running"
    for method, properties, body in stream.seen:
        assert method.routing_key == f"{harness.host}.{body['type'].removeprefix('storage.')}"
        assert properties.content_type == "application/cloudevents+json"
        assert properties.message_id == body["id"] and properties.type == body["type"]
        assert properties.delivery_mode == 2


def test_volume_events_from_commands_name_the_command(watched):
    harness, stream = watched()
    client = harness.client()
    pool = harness.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "v.raw", "capacity": MiB}, command_id="c-1"))
    ok(client.call("volume.resize", {"pool": pool, "name": "v.raw", "capacity": 2 * MiB}, command_id="r-1"))
    ok(client.call("volume.wipe", {"pool": pool, "name": "v.raw"}, command_id="w-1"))
    ok(client.call("volume.delete", {"pool": pool, "name": "v.raw"}, command_id="d-1"))
    stream.wait(lambda e: e["type"] == "storage.volume.deleted" and e["data"]["pool"] == pool, 10,
                "the deleted event")
    time.sleep(2.5)  # two re-listings: they must not report the worker's own changes again
    # The worker watches every pool of the host; only this test's pool is looked at.
    volume_events = [(e["type"], e.get("commandid"), e["data"]["origin"]) for e in stream.events()
                     if e["type"].startswith("storage.volume.") and e["data"]["pool"] == pool]
    assert volume_events == [("storage.volume.created", "c-1", "command"), ("storage.volume.resized", "r-1", "command"),
                             ("storage.volume.wiped", "w-1", "command"), ("storage.volume.deleted", "d-1", "command")]
    resized = by_type(stream.events(), "storage.volume.resized")[0]
    assert resized["data"]["volume"]["capacity"] == 2 * MiB and resized["data"]["pool"] == pool
    assert resized["subject"] == f"pools/{pool}/volumes/v.raw"


def test_volumes_made_and_removed_with_virsh_are_reported(watched):
    harness, stream = watched()
    client = harness.client()
    pool = harness.running_pool(client)
    time.sleep(1.5)  # let a re-listing see the empty pool
    made_at = time.monotonic()
    subprocess.run(["virsh", "-q", "vol-create-as", pool, "outside.raw", "1M"], check=True, capture_output=True)
    created = stream.wait(lambda e: e["type"] == "storage.volume.created" and e["data"]["pool"] == pool,
                          2 * 1.0 + 2, "the external create")
    assert time.monotonic() - made_at <= 2 * 1.0 + 1.5
    assert created[0]["data"]["origin"] == "external" and created[0]["data"]["volume"]["name"] == "outside.raw"
    assert "commandid" not in created[0]
    subprocess.run(["virsh", "-q", "vol-delete", "--pool", pool, "outside.raw"], check=True, capture_output=True)
    deleted = stream.wait(lambda e: e["type"] == "storage.volume.deleted" and e["data"]["pool"] == pool, 4,
                          "the external delete")
    assert deleted[0]["data"]["origin"] == "external"
    assert deleted[0]["data"]["volume"]["capacity"] == MiB, "the last known object"


@pytest.fixture
def small_filesystem(tmp_path):
    """A 32 MiB tmpfs, so that a few volumes move a pool's available/capacity fraction."""
    mounts = []

    def make(path):
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_capacity_low_and_ok_with_hysteresis(watched, small_filesystem):
    harness, stream = watched(capacity_low=0.5)
    client = harness.client()
    pool = harness.name("pool")
    small_filesystem(harness.root / pool)
    ok(client.call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(harness.root / pool)},
                                   "start": True}))

    def capacity_events():
        return [(e["type"], round(e["data"]["pool"]["available"] / e["data"]["pool"]["capacity"], 2))
                for e in stream.events() if ".capacity." in e["type"] and e["subject"] == f"pools/{pool}"]

    for name, size in (("a.raw", 15 * MiB), ("b.raw", 5 * MiB)):
        ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": size, "allocation": size}))
    # Events of other pools on the shared libvirtd pass by too: wait for this pool's.
    stream.wait(lambda e: e["type"] == "storage.pool.capacity.low" and e["subject"] == f"pools/{pool}", 5,
                "capacity low")
    # Free some, but stay under the recovery level (0.6): no ok yet, and no flapping.
    ok(client.call("volume.delete", {"pool": pool, "name": "b.raw"}))
    ok(client.call("pool.refresh", {"name": pool}))
    time.sleep(2.5)
    assert [kind for kind, _ in capacity_events()] == ["storage.pool.capacity.low"]
    ok(client.call("volume.delete", {"pool": pool, "name": "a.raw"}))
    stream.wait(lambda e: e["type"] == "storage.pool.capacity.ok" and e["subject"] == f"pools/{pool}", 5,
                "capacity ok")
    kinds = capacity_events()
    assert [kind for kind, _ in kinds] == ["storage.pool.capacity.low", "storage.pool.capacity.ok"]
    assert kinds[0][1] < 0.5 and kinds[1][1] >= 0.6
    low = by_type(stream.events(), "storage.pool.capacity.low")[0]
    assert low["data"]["threshold"] == 0.5


def test_libvirtd_restart_is_reported_and_changes_made_meanwhile_are_published(watched):
    harness, stream = watched()
    client = harness.client()
    pool = harness.running_pool(client)
    time.sleep(1.5)
    stop_libvirtd()
    try:
        stream.wait(lambda e: e["type"] == "storage.worker.libvirt.disconnected", 15, "disconnected")
        # Made while the worker is blind; libvirtd finds it when it refreshes the pool at start-up.
        with open(harness.root / pool / "meanwhile.raw", "wb") as handle:
            handle.truncate(MiB)
    finally:
        start_libvirtd()
    stream.wait(lambda e: e["type"] == "storage.worker.libvirt.reconnected", 60, "reconnected")
    created = stream.wait(lambda e: e["type"] == "storage.volume.created" and e["data"]["pool"] == pool, 10,
                          "the volume made meanwhile")
    assert created[0]["data"]["volume"]["name"] == "meanwhile.raw" and created[0]["data"]["origin"] == "external"
    kinds = [(e["type"], e["data"].get("pool")) for e in stream.events()]
    assert kinds.index(("storage.worker.libvirt.disconnected", None)) \
        < kinds.index(("storage.worker.libvirt.reconnected", None)) < kinds.index(("storage.volume.created", pool))
    assert ok(client.call("volume.info", {"pool": pool, "name": "meanwhile.raw"}))["capacity"] == MiB
    ok(client.call("volume.create", {"pool": pool, "name": "after.raw", "capacity": MiB}))


def test_every_event_is_a_valid_cloudevent_and_sequences_have_no_gaps(watched):
    harness, stream = watched()
    client = harness.client()
    pool = harness.running_pool(client)
    for index in range(5):
        ok(client.call("volume.create", {"pool": pool, "name": f"v{index}.raw", "capacity": MiB}))
    ok(client.call("pool.refresh", {"name": pool}))
    harness.worker.stop(grace=5)
    stream.wait(lambda e: e["type"] == "storage.worker.offline", 5, "offline")
    events = stream.events()
    # A pool event of another test's pool on the shared libvirtd may come before the worker's own
    # online event; the worker's events and the numbering of all of them are what must hold.
    assert [e["type"] for e in events if e["type"].startswith("storage.worker.")][0] == "storage.worker.online"
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert len({e["id"] for e in events}) == len(events)
    for _, _, body in stream.seen:
        event = JSONFormat().read(None, json.dumps(body).encode())
        assert event.get_specversion() == "1.0"
        assert event.get_source() == f"/storage-worker/{harness.host}"
        assert event.get_extension("host") == harness.host
        assert event.get_time() is not None and body["time"].endswith("Z") and len(body["time"]) == 24


def test_a_broken_pool_does_not_stop_the_relisting_of_the_others(watched, libvirt_conn, tmp_path):
    """A pool libvirt cannot describe all volumes of (a file removed behind its back) is skipped;
    changes in the other pools are still reported."""
    from tests.conftest import unique

    broken = f"{unique('t')}-broken"
    directory = tmp_path / broken
    directory.mkdir()
    pool = libvirt_conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{broken}</name><target><path>{directory}</path></target></pool>", 0)
    try:
        pool.createXML("<volume><name>gone.raw</name><capacity>1024</capacity></volume>", 0)
        (directory / "gone.raw").unlink()
        harness, stream = watched()
        client = harness.client()
        healthy = harness.name("pool")
        ok(client.call("pool.define", {"name": healthy, "type": "dir",
                                       "target": {"path": str(harness.root / healthy)}, "build": True, "start": True}))
        time.sleep(1.5)
        subprocess.run(["virsh", "-q", "vol-create-as", healthy, "seen.raw", "1M"], check=True, capture_output=True)
        created = stream.wait(lambda e: e["type"] == "storage.volume.created" and e["data"]["pool"] == healthy,
                              5, "the create in the healthy pool")
        assert created[0]["data"]["volume"]["name"] == "seen.raw"
    finally:
        pool.destroy()
