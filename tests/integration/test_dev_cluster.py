"""The three-node cluster of scripts/dev-cluster does what the fault tests rely on.

Plain pika only: these tests prove the harness (tests/integration/cluster.py), not the worker. Each
prints what it measured (`scripts/test tests/integration/test_dev_cluster.py -s` shows them).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests.conftest import AMQP_URL, require, unique
from tests.integration.cluster import RabbitCluster

pytestmark = pytest.mark.integration

NODES = (1, 2, 3)
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def measured(what: str, seconds: float) -> None:
    print(f"\n[dev-cluster] {what}: {seconds:.2f} s", flush=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - began


@contextmanager
def connect(url: str) -> Iterator[pika.BlockingConnection]:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 30
    connection = pika.BlockingConnection(params)
    try:
        yield connection
    finally:
        if connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass


def declare_quorum(channel, queue: str) -> None:
    channel.queue_declare(queue, durable=True,
                          arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 3})


def drain(channel, queue: str) -> list[bytes]:
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def queue_row(cluster: RabbitCluster, n: int, queue: str) -> dict:
    rows = json.loads(cluster.ctl(n, "list_queues", "name", "type", "leader", "members", "online",
                                  "--formatter", "json"))
    return next(row for row in rows if row["name"] == queue)


def running_nodes(cluster: RabbitCluster, n: int) -> set[str]:
    return set(json.loads(cluster.ctl(n, "cluster_status", "--formatter", "json"))["running_nodes"])


def delete_queue(cluster: RabbitCluster, queue: str) -> None:
    for n in NODES:
        try:
            with connect(cluster.url(n)) as connection:
                connection.channel().queue_delete(queue)
            return
        except pika.exceptions.AMQPError:
            continue


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_three_nodes_form_one_cluster(rabbit_cluster):
    if rabbit_cluster.start_seconds is not None:
        measured("start to a formed cluster (this session)", rabbit_cluster.start_seconds)
    assert len(rabbit_cluster.urls) == 3
    assert rabbit_cluster.url_list == ";".join(rabbit_cluster.urls)
    names = {rabbit_cluster.node_name(n) for n in NODES}
    assert len(names) == 3
    cluster_names = set()
    for n in NODES:
        assert running_nodes(rabbit_cluster, n) == names, f"node {n}"
        with connect(rabbit_cluster.url(n)) as connection:
            name = connection._impl.server_properties["cluster_name"]
            cluster_names.add(name.decode() if isinstance(name, bytes) else name)
    assert len(cluster_names) == 1, cluster_names
    for n, pid in sorted(rabbit_cluster.pids().items()):
        print(f"\n[dev-cluster] node {n} (pid {pid}) RSS: {rss_mib(pid):.0f} MiB", flush=True)


def test_quorum_queue_declared_through_one_node_has_three_members(rabbit_cluster):
    queue = unique("swc-q")
    try:
        with connect(rabbit_cluster.url(2)) as connection:
            declare_quorum(connection.channel(), queue)
        row = queue_row(rabbit_cluster, 1, queue)
        assert row["type"] == "quorum"
        assert sorted(row["members"]) == sorted(rabbit_cluster.node_name(n) for n in NODES)
        assert rabbit_cluster.leader(queue) in NODES
    finally:
        delete_queue(rabbit_cluster, queue)


def test_confirmed_publish_through_one_node_is_consumed_through_another(rabbit_cluster):
    queue = unique("swc-q")
    try:
        with connect(rabbit_cluster.url(1)) as a, connect(rabbit_cluster.url(3)) as b:
            publisher = a.channel()
            declare_quorum(publisher, queue)
            publisher.confirm_delivery()
            for i in range(10):
                publisher.basic_publish("", queue, f"m{i}".encode(), PERSISTENT, mandatory=True)
            consumer = b.channel()
            got = drain(consumer, queue)
        assert got == [f"m{i}".encode() for i in range(10)]
    finally:
        delete_queue(rabbit_cluster, queue)


def publish_until_confirmed(connection: pika.BlockingConnection, channel, queue: str, body: bytes,
                            timeout: float = 30.0):
    """Publish with confirms until the broker acks; a nack (an election under way) is answered with a
    new channel (RabbitMQ 3.10.8 can keep nacking a channel that published while the leader was
    down). Returns the channel that got the ack."""
    end = time.monotonic() + timeout
    while True:
        try:
            channel.basic_publish("", queue, body, PERSISTENT, mandatory=True)
            return channel
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError, pika.exceptions.ChannelClosed):
            if time.monotonic() > end:
                raise
            if channel.is_open:
                channel.close()
            channel = connection.channel()
            channel.confirm_delivery()
            time.sleep(0.05)


def test_killing_the_leader_elects_another_and_keeps_confirmed_messages(rabbit_cluster):
    queue = unique("swc-q")
    try:
        with connect(rabbit_cluster.url(1)) as connection:
            declare_quorum(connection.channel(), queue)
        leader = rabbit_cluster.leader(queue)
        survivors = [n for n in NODES if n != leader]
        with connect(rabbit_cluster.url(survivors[0])) as publisher, \
             connect(rabbit_cluster.url(survivors[1])) as reader:
            channel = publisher.channel()
            channel.confirm_delivery()
            sent = [f"m{i}".encode() for i in range(100)]
            for body in sent:
                channel.basic_publish("", queue, body, PERSISTENT, mandatory=True)

            killed_at = time.monotonic()
            rabbit_cluster.kill(leader)
            publish_until_confirmed(publisher, channel, queue, b"after")
            measured("leader killed to a confirmed publish", time.monotonic() - killed_at)
            new_leader = 0

            def elected() -> bool:
                nonlocal new_leader
                try:
                    new_leader = rabbit_cluster.leader(queue)
                except Exception:  # no node answers for the queue yet
                    return False
                return new_leader != leader

            wait_until(elected, 30, "a new leader")
            measured("leader killed to a new leader listed by rabbitmqctl", time.monotonic() - killed_at)
            assert new_leader in survivors

            got = drain(reader.channel(), queue)
        assert got[:len(sent)] == sent
        assert set(got[len(sent):]) == {b"after"}

        began = time.monotonic()
        rabbit_cluster.restart(leader)
        measured("killed node restarted until rejoined (formed again)", time.monotonic() - began)
        assert running_nodes(rabbit_cluster, leader) == {rabbit_cluster.node_name(n) for n in NODES}
    finally:
        delete_queue(rabbit_cluster, queue)


def tcp_outcome(host: str, port: int, timeout: float = 1.0) -> str:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except OSError:  # timeout, or no route once ARP gives up: nothing came back
        return "silent"
    return "open"


def test_cut_node_pauses_as_minority_and_heal_brings_it_back(rabbit_cluster):
    cut, majority = 3, (1, 2)
    host, port = rabbit_cluster.url(cut).split("@", 1)[1].split("/", 1)[0].split(":")
    pid = rabbit_cluster.pids()[cut]
    queue = unique("swc-q")
    try:
        with connect(rabbit_cluster.url(1)) as connection:
            declare_quorum(connection.channel(), queue)

        cut_at = time.monotonic()
        rabbit_cluster.cut(cut)
        assert tcp_outcome(host, int(port)) == "silent"
        measured("cut to the minority node paused (its AMQP port closed)",
                 wait_until(lambda: not rabbit_cluster.answers(cut), 60, f"node {cut} pausing", 0.2))
        assert rabbit_cluster.pids().get(cut) == pid, "paused, not dead"
        majority_names = {rabbit_cluster.node_name(n) for n in majority}
        wait_until(lambda: running_nodes(rabbit_cluster, 1) == majority_names, 30, "the majority's view")

        # the majority still takes confirmed publishes for the queue
        with connect(rabbit_cluster.url(2)) as connection:
            publish_until_confirmed(connection, connection.channel(), queue, b"during the cut")
        print(f"\n[dev-cluster] (cut held {time.monotonic() - cut_at:.1f} s)", flush=True)

        healed_at = time.monotonic()
        rabbit_cluster.heal(cut)
        wait_until(lambda: rabbit_cluster.answers(cut), 60, f"node {cut} answering again", 0.2)
        measured("heal to the paused node answering again", time.monotonic() - healed_at)
        rabbit_cluster.wait_formed(60)
        measured("heal to a formed cluster", time.monotonic() - healed_at)

        with connect(rabbit_cluster.url(cut)) as connection:
            assert drain(connection.channel(), queue) == [b"during the cut"]
    finally:
        rabbit_cluster.heal(cut)
        delete_queue(rabbit_cluster, queue)


def test_cut_host_silences_every_node_for_clients_but_not_the_cluster(rabbit_cluster):
    endpoints = [rabbit_cluster.url(n).split("@", 1)[1].split("/", 1)[0].split(":") for n in NODES]
    rabbit_cluster.cut("host")
    try:
        assert [tcp_outcome(host, int(port)) for host, port in endpoints] == ["silent"] * 3
        # the nodes still see each other (rabbitmqctl runs inside the node's namespace)
        assert running_nodes(rabbit_cluster, 2) == {rabbit_cluster.node_name(n) for n in NODES}
    finally:
        rabbit_cluster.heal("host")
    # a SYN or ARP request lost just before the heal is only retried after a second or so
    measured("heal of the host link to every node reachable again",
             wait_until(lambda: [tcp_outcome(host, int(port)) for host, port in endpoints] == ["open"] * 3,
                        15, "every node reachable from the host"))


def test_cut_between_host_and_one_node_leaves_the_others_reachable(rabbit_cluster):
    endpoints = [rabbit_cluster.url(n).split("@", 1)[1].split("/", 1)[0].split(":") for n in NODES]
    rabbit_cluster.cut("host", 2)
    try:
        assert [tcp_outcome(host, int(port)) for host, port in endpoints] == ["open", "silent", "open"]
        assert rabbit_cluster.answers(2)
    finally:
        rabbit_cluster.heal("host", 2)
    assert [tcp_outcome(host, int(port)) for host, port in endpoints] == ["open"] * 3


def test_start_when_running_is_fast(rabbit_cluster):
    began = time.monotonic()
    rabbit_cluster.run("start")
    took = time.monotonic() - began
    measured("start when the cluster already runs", took)
    assert took < 2.0


def machine_broker_answers() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def processes_outside_namespaces(names: tuple[str, ...]) -> dict[int, str]:
    """beam.smp and epmd processes in this machine's own network namespace."""
    own_net = Path("/proc/self/ns/net").resolve()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm in names and (proc / "ns" / "net").resolve() == own_net:
                found[int(proc.name)] = comm
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_removes_only_what_it_started(rabbit_cluster):
    """Runs last: stops the cluster (a later test's fixture would start it again)."""
    require(machine_broker_answers(), f"the machine's own broker does not answer at {AMQP_URL}")
    machine = processes_outside_namespaces(("beam.smp", "epmd"))
    prefix = rabbit_cluster.netns_prefix
    ours = set()
    for ns in [f"{prefix}-hub"] + [f"{prefix}-n{n}" for n in NODES]:
        ours |= {int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                                check=True).stdout.split()}
    assert set(rabbit_cluster.pids().values()) <= ours
    try:
        began = time.monotonic()
        rabbit_cluster.stop()
        measured("stop", time.monotonic() - began)

        assert not [pid for pid in ours if alive(pid)]
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [line for line in namespaces.splitlines() if line.startswith(f"{prefix}-")]
        assert subprocess.run(["ip", "link", "show", f"{prefix}-host"], capture_output=True).returncode != 0
        assert not rabbit_cluster.running()
        # every beam.smp and epmd outside our namespaces (the machine's broker) is still there
        assert [pid for pid in machine if not alive(pid)] == []
        assert machine_broker_answers()
    finally:
        if rabbit_cluster.keep_running:
            rabbit_cluster.start()
