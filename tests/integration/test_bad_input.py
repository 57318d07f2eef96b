"""Bad input (docs/contract.md "Results") sent with a plain pika client: each gets a specific rejected result,
undecodable messages are dead-lettered, and the worker goes on serving."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pika
import pytest

from tests.conftest import AMQP_URL
from tests.integration.conftest import ok

pytestmark = pytest.mark.integration


class RawSender:
    """Publishes arbitrary bodies to the command exchange with a reply queue of its own."""

    def __init__(self, harness):
        self.topology = harness.settings.topology
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue

    def send(self, body: bytes, *, reply: bool = True, message_id: str | None = None,
             correlation_id: str | None = None) -> str:
        correlation_id = correlation_id or str(uuid.uuid4())
        self.channel.basic_publish(self.topology.commands_exchange, self.topology.command_routing_key, body,
                                   pika.BasicProperties(reply_to=self.reply_queue if reply else None,
                                                        correlation_id=correlation_id, message_id=message_id,
                                                        content_type="application/json", delivery_mode=2))
        return correlation_id

    def reply(self, correlation_id: str, timeout: float = 15) -> tuple[dict, pika.BasicProperties]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            method, properties, body = self.channel.basic_get(self.reply_queue, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.05)
                continue
            if properties.correlation_id == correlation_id:
                return json.loads(body), properties
        raise AssertionError(f"no reply with correlation id {correlation_id} within {timeout} s")

    def call(self, body: bytes, **kwargs) -> dict:
        return self.reply(self.send(body, **kwargs))[0]

    def close(self):
        self.connection.close()


@pytest.fixture
def raw(harness):
    sender = RawSender(harness)
    yield sender
    sender.close()


def dead_letters(harness, wait: float = 3.0) -> list[tuple[pika.BasicProperties, bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    found = []
    end = time.monotonic() + wait
    while time.monotonic() < end:
        method, properties, body = channel.basic_get(harness.settings.topology.dead_letter_queue, auto_ack=True)
        if method is None:
            if found:
                break
            time.sleep(0.1)
            continue
        found.append((properties, body))
    connection.close()
    return found


def command(op: str, args: dict, **extra) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "op": op, "args": args, **extra}).encode()


UNDECODABLE = [
    (b"this is not json", "not JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2, 3]", "a JSON array, not an object"),
    (b'{"op": "host.info", "args": {}}', "has no id"),
    (b'{"id": 42, "op": "host.info"}', "42"),
    (b'{"id": "has space", "op": "host.info"}', "'has space'"),
    (json.dumps({"id": "x" * 129, "op": "host.info"}).encode(), "1-128"),
    (b'{"id": "big", "pad": "' + b"x" * (1024 * 1024) + b'"}', "over the limit"),
]


@pytest.mark.parametrize("body,reason", UNDECODABLE, ids=[r for _, r in UNDECODABLE])
def test_undecodable_is_rejected_to_reply_to_and_dead_lettered(harness, raw, tap, body, reason):
    results = tap(harness.settings.topology.results_exchange, f"{harness.host}.unknown.rejected")
    answer = raw.call(body, message_id="msg-1")
    assert answer["status"] == "rejected" and answer["op"] is None and answer["id"] == "msg-1"
    assert answer["error"]["code"] == "invalid"
    assert reason in answer["error"]["message"]
    dead = dead_letters(harness)
    assert len(dead) == 1
    properties, dead_body = dead[0]
    assert dead_body == body
    assert reason in properties.headers["x-storage-worker-reason"]
    assert [r["id"] for r in results.bodies()] == ["msg-1"]
    assert ok(harness.client().call("host.info", {}))["host_id"] == harness.host


def test_undecodable_without_reply_to_is_still_dead_lettered(harness, raw):
    raw.send(b"{not json", reply=False)
    dead = dead_letters(harness)
    assert [body for _, body in dead] == [b"{not json"]
    ok(harness.client().call("host.info", {}))


REJECTED = [
    ({"op": "volume.explode", "args": {}}, "'volume.explode' is not an operation"),
    ({"args": {}}, "op is required"),
    ({"op": "host.info", "args": {}, "colour": "red"}, "'colour' is not a field"),
    ({"op": "pool.info", "args": []}, "args must be a JSON object"),
    ({"op": "pool.info", "args": {"name": "p", "colour": "red"}}, "args.colour is not a field of pool.info (got 'red')"),
    ({"op": "pool.info", "args": {}}, "args.name is required"),
    ({"op": "volume.create", "args": {"pool": "p", "name": "a/b", "capacity": 1}}, "'a/b'"),
    ({"op": "volume.create", "args": {"pool": "p", "name": "..", "capacity": 1}}, "'..'"),
    ({"op": "volume.create", "args": {"pool": "p", "name": "v", "capacity": -5}}, "args.capacity"),
    ({"op": "volume.create", "args": {"pool": "p", "name": "v", "capacity": "10G"}}, "'10G'"),
    ({"op": "volume.create", "args": {"pool": "p", "name": "v", "capacity": 1, "format": "zip"}}, "'zip'"),
    ({"op": "pool.define", "args": {"name": "p", "type": "dir", "target": {"path": "relative/dir"}}},
     "'relative/dir'"),
    ({"op": "pool.define", "args": {"name": "p", "type": "dir", "target": {"path": "/var/lib/../../etc"}}},
     "normalized"),
    ({"op": "host.info", "args": {}, "deadline": "tomorrow"}, "'tomorrow'"),
]


@pytest.mark.parametrize("envelope,reason", REJECTED, ids=[r for _, r in REJECTED])
def test_invalid_command_is_rejected_naming_field_and_value(harness, raw, tap, envelope, reason):
    results = tap(harness.settings.topology.results_exchange, f"{harness.host}.#")
    command_id = str(uuid.uuid4())
    answer = raw.call(json.dumps({"id": command_id, **envelope}).encode())
    assert answer["id"] == command_id and answer["status"] == "rejected"
    assert answer["error"]["code"] == "invalid", answer
    assert reason in answer["error"]["message"]
    assert answer["attempts"] == 0 and answer["started_at"] is None
    published = results.bodies()
    assert [r["id"] for r in published] == [command_id]
    assert dead_letters(harness, wait=0.5) == []


def test_expired_deadline_is_rejected_and_never_runs(harness, raw, pool, libvirt_conn):
    past = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    answer = raw.call(command("volume.create", {"pool": pool, "name": "late.raw", "capacity": 1024}, deadline=past))
    assert answer["status"] == "rejected" and answer["error"]["code"] == "expired"
    assert past in answer["error"]["message"]
    assert "late.raw" not in libvirt_conn.storagePoolLookupByName(pool).listVolumes()


def test_future_deadline_runs(harness, raw, pool):
    future = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    answer = raw.call(command("volume.create", {"pool": pool, "name": "ontime.raw", "capacity": 1024},
                              deadline=future))
    assert answer["status"] == "succeeded"


def test_target_outside_allowed_roots_is_forbidden(harness, raw):
    answer = raw.call(command("pool.define", {"name": harness.name("p"), "type": "dir",
                                              "target": {"path": "/etc/evil"}}))
    assert answer["status"] == "rejected" and answer["error"]["code"] == "forbidden"
    assert "'/etc/evil'" in answer["error"]["message"]


def test_correlation_id_defaults_to_command_id(harness, raw):
    body = json.dumps({"id": "corr-default-1", "op": "host.info"}).encode()
    raw.channel.basic_publish(raw.topology.commands_exchange, raw.topology.command_routing_key, body,
                              pika.BasicProperties(reply_to=raw.reply_queue, delivery_mode=2))
    answer, properties = raw.reply("corr-default-1")
    assert answer["id"] == "corr-default-1" and properties.correlation_id == "corr-default-1"


def test_resent_id_gets_the_stored_result_as_duplicate_without_a_second_side_effect(harness, raw, tap, pool,
                                                                                     libvirt_conn):
    results = tap(harness.settings.topology.results_exchange, f"{harness.host}.#")
    body = command("volume.create", {"pool": pool, "name": "once.raw", "capacity": 4096})
    first = raw.call(body)
    assert first["status"] == "succeeded" and first["result"]["changed"] is True
    # Delete the volume behind the worker's back: a re-run would create it again.
    libvirt_conn.storagePoolLookupByName(pool).storageVolLookupByName("once.raw").delete(0)
    second = raw.call(body)
    assert second["duplicate"] is True
    assert {k: v for k, v in second.items() if k != "duplicate"} == {k: v for k, v in first.items() if k != "duplicate"}
    assert "once.raw" not in libvirt_conn.storagePoolLookupByName(pool).listVolumes()
    assert [r["id"] for r in results.bodies()] == [first["id"]], "storage.results sees the original once"


def test_a_resent_read_is_answered_with_its_first_result_by_this_worker_and_the_next(make_worker, libvirt_conn):
    """A read's result waits in memory for the journal's next write: a repeat is answered from there
    at once, and from the journal by the worker that follows a clean stop."""
    first = make_worker()
    client = first.client()
    pool = first.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "read.raw", "capacity": 4096}))
    command_id = str(uuid.uuid4())
    answer = client.call("volume.info", {"pool": pool, "name": "read.raw"}, command_id=command_id)
    assert ok(answer)["capacity"] == 4096 and not answer.duplicate
    libvirt_conn.storagePoolLookupByName(pool).storageVolLookupByName("read.raw").resize(8192)
    again = client.call("volume.info", {"pool": pool, "name": "read.raw"}, command_id=command_id)
    assert again.duplicate and again.result == answer.result and again.finished_at == answer.finished_at
    first.worker.stop(grace=10)
    settings = first.settings
    second = make_worker(host_id=settings.host_id, prefix=settings.prefix, state_dir=settings.state_dir,
                         allowed_roots=settings.allowed_roots)
    later = second.client().call("volume.info", {"pool": pool, "name": "read.raw"}, command_id=command_id)
    assert later.duplicate and later.result == answer.result and later.finished_at == answer.finished_at
    fresh = ok(second.client().call("volume.info", {"pool": pool, "name": "read.raw"}))
    assert fresh["capacity"] == 8192


def test_same_id_with_other_args_is_a_conflict(harness, raw, pool):
    command_id = str(uuid.uuid4())
    first = raw.call(json.dumps({"id": command_id, "op": "pool.info", "args": {"name": pool}}).encode())
    assert first["status"] == "succeeded"
    other = raw.call(json.dumps({"id": command_id, "op": "volume.list", "args": {"pool": pool}}).encode())
    assert other["status"] == "rejected" and other["error"]["code"] == "conflict"
    assert command_id in other["error"]["message"] and "pool.info" in other["error"]["message"]


def test_a_burst_of_garbage_does_not_stall_the_worker(harness, raw):
    for index in range(50):
        raw.send(b"garbage %d" % index, reply=False)
    assert ok(harness.client().call("host.info", {}, timeout=30))["host_id"] == harness.host
    assert len(dead_letters(harness, wait=5)) == 50


def test_the_policy_rejects_what_a_broker_user_may_not_do(make_worker, tmp_path, libvirt_conn):
    """user_id is validated by RabbitMQ against the connection's user (here: guest)."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[default]\nops = []\n[users.guest]\nops = ["host.info", "pool.*"]\npools = ["allowed-*"]\n')
    harness = make_worker(policy_file=policy)
    sender = RawSender(harness)
    try:
        def send(op, args):
            body = json.dumps({"id": str(uuid.uuid4()), "op": op, "args": args}).encode()
            correlation_id = str(uuid.uuid4())
            sender.channel.basic_publish(sender.topology.commands_exchange, sender.topology.command_routing_key, body,
                                         pika.BasicProperties(reply_to=sender.reply_queue, user_id="guest",
                                                              correlation_id=correlation_id, delivery_mode=2))
            return sender.reply(correlation_id)[0]

        assert send("host.info", {})["status"] == "succeeded"
        refused = send("volume.delete", {"pool": "allowed-1", "name": "v"})
        assert refused["status"] == "rejected" and refused["error"]["code"] == "forbidden"
        assert "'guest'" in refused["error"]["message"] and "volume.delete" in refused["error"]["message"]
        name = harness.name("pool")
        outside = send("pool.define", {"name": name, "type": "dir", "target": {"path": str(harness.root / name)}})
        assert outside["error"]["code"] == "forbidden" and f"'{name}'" in outside["error"]["message"]
        assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]
        anonymous = sender.call(command("host.info", {}))
        assert anonymous["error"]["code"] == "forbidden", "no user_id: the default rule, which allows nothing"
    finally:
        sender.close()
