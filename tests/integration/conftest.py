"""A real worker on the real broker and the real libvirtd, isolated per test.

Each worker gets its own exchange prefix and host id (so tests never see each other's messages), a
temporary state dir, and ALLOWED_ROOTS limited to the test's temporary directory. Pools and volumes a
test makes are named with its prefix and removed afterwards, broker objects too.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pika
import pytest

from messages.client import StorageClient
from messages.results import Result
from tests.conftest import AMQP_URL, LIBVIRT_URI, require, unique
from tests.integration.cluster import rabbit_cluster, rabbit_cluster_session  # noqa: F401 (fixtures)
from worker.app import Worker
from worker.config import Settings



@pytest.fixture(scope="session")
def broker_ok() -> None:
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as exc:
        require(False, f"RabbitMQ is not reachable at {AMQP_URL}: {exc!r}")


def delete_broker_objects(settings: Settings, amqp_url: str = AMQP_URL) -> None:
    topology = settings.topology
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in (topology.command_queue, topology.dead_letter_queue, topology.event_stream):
            channel.queue_delete(queue)
        for exchange in (topology.commands_exchange, topology.results_exchange, topology.events_exchange,
                         topology.dead_letter_exchange):
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def remove_pools(prefix: str) -> None:
    """Destroy and undefine every pool (and its volumes) whose name starts with `prefix`.
    Opens its own connection: a test may have restarted libvirtd."""
    conn = libvirt.open(LIBVIRT_URI)
    try:
        _remove_pools(conn, prefix)
    finally:
        conn.close()


def _remove_pools(conn: libvirt.virConnect, prefix: str) -> None:
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(prefix):
            _remove_pool(pool)


def _remove_pool(pool: libvirt.virStoragePool, patience: float = 120.0) -> None:
    """Volumes, then the pool. A wipe or clone that libvirtd carries on with after a worker under
    test was killed keeps a volume "in use": wait for it rather than leave the pool behind."""
    end = time.monotonic() + patience
    while True:
        try:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                volume.delete(0)
            break
        except libvirt.libvirtError as error:
            busy = any(m in str(error) for m in ("in use", "asynchronous jobs", "being allocated"))
            if not busy or time.monotonic() > end:
                break
            time.sleep(0.5)
    try:
        if pool.isActive():
            pool.destroy()
    except libvirt.libvirtError:
        pass
    try:
        pool.undefine()
    except libvirt.libvirtError:
        pass


@dataclass
class Harness:
    """A running worker plus what a test needs to drive it."""

    worker: Worker
    settings: Settings
    root: Path
    name_prefix: str
    clients: list[StorageClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.settings.host_id

    def client(self) -> StorageClient:
        client = StorageClient(AMQP_URL, host_id=self.settings.host_id, prefix=self.settings.prefix)
        self.clients.append(client)
        return client

    def name(self, what: str = "") -> str:
        return f"{self.name_prefix}{what}{uuid.uuid4().hex[:6]}"

    def running_pool(self, client: StorageClient) -> str:
        """A dir pool under the test's allowed root, defined, built and started through the worker."""
        name = self.name("pool")
        result = client.call("pool.define", {"name": name, "type": "dir", "target": {"path": str(self.root / name)},
                                             "build": True, "start": True})
        assert result.status.value == "succeeded", result
        return name


@pytest.fixture
def make_worker(broker_ok, libvirt_conn, tmp_path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        tag = unique("t")
        root = tmp_path / "roots" / tag
        root.mkdir(parents=True)
        values = {"host_id": tag, "prefix": f"test-{tag}", "amqp_url": AMQP_URL, "libvirt_uri": LIBVIRT_URI,
                  "state_dir": tmp_path / "state" / tag, "allowed_roots": [str(root)], "concurrency": 4,
                  "metrics_port": 0, "retry_max_seconds": 10.0, **overrides}
        settings = Settings(**values)
        worker = Worker(settings)
        harness = Harness(worker=worker, settings=settings, root=root, name_prefix=f"{tag}-")
        made.append(harness)
        worker.start()
        return harness

    yield make
    # Every worker stops before any broker object goes: workers may share a prefix.
    failures: list[BaseException] = []
    for harness in made:
        for client in harness.clients:
            try:
                client.close()
            except pika.exceptions.AMQPError:
                pass
        try:
            harness.worker.stop(grace=10)
        except Exception as error:  # noqa: BLE001 - the others still stop and everything is removed
            failures.append(error)
    for harness in made:
        remove_pools(harness.name_prefix)
        delete_broker_objects(harness.settings)
    if failures:
        raise failures[0]


@pytest.fixture
def harness(make_worker) -> Harness:
    return make_worker()


@pytest.fixture
def client(harness) -> StorageClient:
    return harness.client()


@pytest.fixture
def pool(harness, client) -> str:
    """A running dir pool under the test's allowed root."""
    return harness.running_pool(client)


def ok(result: Result) -> dict[str, Any]:
    """The payload of a succeeded result; fails the test with the whole result otherwise."""
    assert result.status.value == "succeeded", json.dumps(result.model_dump(mode="json"), indent=2)
    assert result.result is not None
    return result.result


def error_of(result: Result, status: str, code: str) -> str:
    assert result.status.value == status, json.dumps(result.model_dump(mode="json"), indent=2)
    assert result.error is not None and result.error.code.value == code, result.error
    return result.error.message


class Tap:
    """A temporary queue bound to an exchange, collecting what is published there."""

    def __init__(self, exchange: str, routing_key: str = "#"):
        self._connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self._channel = self._connection.channel()
        self.queue = self._channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self._channel.queue_bind(self.queue, exchange, routing_key)
        self.messages: list[tuple[Any, Any, bytes]] = []

    def drain(self, wait: float = 0.5) -> list[tuple[Any, Any, bytes]]:
        end = time.monotonic() + wait
        while True:
            method, properties, body = self._channel.basic_get(self.queue, auto_ack=True)
            if method is not None:
                self.messages.append((method, properties, body))
                continue
            if time.monotonic() >= end:
                return self.messages
            self._connection.process_data_events(time_limit=0.05)

    def bodies(self, wait: float = 0.5) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.drain(wait)]

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


@pytest.fixture
def tap() -> Iterator[Callable[[str, str], Tap]]:
    taps: list[Tap] = []

    def make(exchange: str, routing_key: str = "#") -> Tap:
        t = Tap(exchange, routing_key)
        taps.append(t)
        return t

    yield make
    for t in taps:
        t.close()


def call_async(client_factory: Callable[[], StorageClient], op: str, args: dict[str, Any],
               timeout: float = 120, command_id: str | None = None) -> tuple[threading.Thread, list[Result]]:
    """Run client.call on a thread (each thread needs its own client: pika is not thread-safe)."""
    out: list[Result] = []

    def run() -> None:
        out.append(client_factory().call(op, args, timeout=timeout, command_id=command_id))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def rabbitmqctl(*args: str) -> str:
    import subprocess

    completed = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60,
                               env={**os.environ})
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def broker_connection_pid(connection_name: str, ctl: Callable[..., str] | None = None) -> str | None:
    """The broker's pid of the connection a client named `connection_name`, if it is connected;
    `ctl` runs rabbitmqctl against another broker than the machine's."""
    for line in (ctl or rabbitmqctl)("list_connections", "pid", "client_properties").splitlines():
        if f'"{connection_name}"' in line:
            return line.split("\t", 1)[0]
    return None


def queue_depth(queue: str) -> int:
    """Ready plus unacknowledged messages of a queue."""
    for line in rabbitmqctl("list_queues", "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"queue {queue} does not exist")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
