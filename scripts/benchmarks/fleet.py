"""Many hosts on one cluster: N workers with distinct host ids on the three-node dev cluster.

    scripts/bench --only fleet [--fleet 10,50]

Runs against the cluster `scripts/dev-cluster` manages, with the environment it reads
(STORAGE_WORKER_CLUSTER_DIR, _NETNS, _NET), so a fleet run can have a cluster of its own; it starts
the cluster when none runs and stops it afterwards only then. For each N, a fresh fleet:

- N `storage-worker run` processes, one prefix, host ids `<prefix>-h000`…, AMQP_URL listing the
  three nodes (each process connects to one, shuffled), one state dir each, and a dir pool each
  (all under one root) holding a 1 MiB volume. Every worker shares this machine's one libvirtd,
  so each sees every pool: in a shared pool, each would look through the others' volumes on every
  delete and report them as made outside it, and RECONCILE_INTERVAL is long so that no re-listing
  reports the others' pools either — artefacts of the bench, not of a fleet (a libvirtd per host).
- memory: each worker's RSS after the load; each node's RSS and its memory breakdown
  (rabbitmqctl status) before the fleet started and after.
- connections and channels per worker, and how the workers spread over the nodes
  (rabbitmqctl list_connections); queues by type (rabbitmqctl list_queues).
- pipelined volume.info across all hosts (8 in flight per host, one client): aggregate rate, p50,
  p99 and the worst host's p99.
- events: pipelined volume.create on every host; the volume.created events made by those commands
  that reach a queue bound to the events exchange with `#`, per second (others — pool events of
  other users of this libvirtd — are counted apart).
- resume: SIGKILL of the node most workers are connected to; for each host, the time from the
  kill to the first answer to a volume.info sent after it (sent again every 0.5 s until one comes
  back); the node is restarted afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import libvirt
import pika

from benchmarks.common import (
    CLI,
    LIBVIRT_URI,
    BenchPool,
    MiB,
    Row,
    Table,
    free_port,
    ms,
    percentile,
)

DEV_CLUSTER = Path(__file__).resolve().parents[1] / "dev-cluster"
IN_FLIGHT_PER_HOST = 8


class Cluster:
    """scripts/dev-cluster, with the environment this process was given."""

    def __init__(self) -> None:
        self.started_here = not self.pids()
        self.run("start", timeout=300)
        self.urls = self.run("urls").split()

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(DEV_CLUSTER), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"dev-cluster {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-800:]}")
        return done.stdout

    def pids(self) -> dict[int, int]:
        return {int(n): int(pid) for n, pid in (line.split() for line in self.run("pids").splitlines() if line.strip())}

    def node_of_address(self, address: str) -> int:
        """Node number of a node's IP address (the host column of list_connections)."""
        for index, url in enumerate(self.urls, start=1):
            if f"@{address}:" in url:
                return index
        raise ValueError(f"no node of the cluster has address {address!r}")

    def status(self, n: int) -> dict[str, Any]:
        return json.loads(self.run("ctl", str(n), "status", "--formatter", "json"))

    def rows(self, *args: str) -> list[list[str]]:
        """A rabbitmqctl listing (cluster-wide ones: connections, queues), asked of a running node."""
        out = self.run("ctl", str(min(self.pids())), "-q", *args, "--no-table-headers")
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    def stop_if_started_here(self) -> None:
        if self.started_here:
            self.run("stop", timeout=120)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class FleetWorker:
    def __init__(self, host_id: str, prefix: str, amqp_url: str, root: Path, state: Path):
        self.host_id = host_id
        self.metrics_port = free_port()
        state.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "STORAGE_WORKER_HOST_ID": host_id, "STORAGE_WORKER_PREFIX": prefix,
               "STORAGE_WORKER_AMQP_URL": amqp_url, "STORAGE_WORKER_STATE_DIR": str(state),
               "STORAGE_WORKER_ALLOWED_ROOTS": json.dumps([str(root)]),
               "STORAGE_WORKER_METRICS_PORT": str(self.metrics_port), "STORAGE_WORKER_LOG_LEVEL": "WARNING",
               "STORAGE_WORKER_RECONCILE_INTERVAL": "3600"}
        with open(state / "worker.log", "ab") as log:
            self.process = subprocess.Popen([CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.host_id} exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class FleetClient:
    """Request/reply over direct reply-to to any host of the fleet, with latencies kept per host."""

    def __init__(self, url: str, prefix: str):
        self.exchange = f"{prefix}.commands"
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.pending: dict[str, tuple[str, float]] = {}  # correlation id -> (host, sent at)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.answered_at: dict[str, list[float]] = defaultdict(list)
        self.failed: list[bytes] = []
        self.channel: Any = None
        self.new_channel()

    def new_channel(self) -> None:
        """Publish and take replies on a channel of its own from now on. RabbitMQ 3.10 drops every
        publish of a channel whose first publish to a quorum queue went out while that queue had
        no leader (docs: DESIGN, cluster notes): after a node kill, probes go out on new channels.
        Earlier channels stay open, so replies to what was sent on them still arrive."""
        self.channel = self.connection.channel()
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        sent = self.pending.pop(properties.correlation_id, None)
        if sent is None:
            return
        host, at = sent
        now = time.perf_counter()
        self.latencies[host].append(now - at)
        self.answered_at[host].append(now)
        if json.loads(body).get("status") != "succeeded":
            self.failed.append(body)

    def send(self, host: str, op: str, args: dict) -> None:
        command_id = str(uuid.uuid4())
        body = json.dumps({"id": command_id, "op": op, "args": args}).encode()
        self.pending[command_id] = (host, time.perf_counter())
        self.channel.basic_publish(self.exchange, host, body, pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=command_id, content_type="application/json",
            delivery_mode=2))

    def pipelined(self, commands: list[tuple[str, str, dict]], in_flight: int) -> float:
        """Commands per second with `in_flight` outstanding, in the order given."""
        for host in list(self.latencies):
            self.latencies[host] = []
        pending = list(reversed(commands))
        began = time.perf_counter()
        while pending or self.pending:
            while pending and len(self.pending) < in_flight:
                self.send(*pending.pop())
            self.connection.process_data_events(time_limit=None)
        return len(commands) / (time.perf_counter() - began)

    def expect_succeeded(self, what: str) -> None:
        failed, self.failed = self.failed, []
        if failed:
            raise RuntimeError(f"{len(failed)} {what} results did not succeed, e.g. {failed[0][:300]!r}")

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except pika.exceptions.AMQPError:
            pass  # the node it used may have been killed: nothing left to close


class EventCounter:
    """A queue bound to the events exchange with `#`, drained by a thread of its own."""

    def __init__(self, url: str, prefix: str):
        self.times: list[float] = []
        self.command_made = 0
        self._stop = threading.Event()
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, f"{prefix}.events", "#")
        channel.basic_consume(queue, self._on_event, auto_ack=True)
        self._connection = connection
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _on_event(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        self.times.append(time.perf_counter())
        if json.loads(body).get("commandid"):
            self.command_made += 1

    def _pump(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(time_limit=0.2)
        self._connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def bench_fleet(table: Table, root: Path, tag: str, sizes: list[int]) -> None:
    cluster = Cluster()
    try:
        for size in sizes:
            _one_fleet(table, cluster, root, f"fleet{tag}n{size}", size)
    finally:
        cluster.stop_if_started_here()


def _one_fleet(table: Table, cluster: Cluster, root: Path, prefix: str, size: int) -> None:
    area = f"fleet {size}"
    hosts = [f"{prefix}-h{index:03d}" for index in range(size)]
    pools: dict[str, BenchPool] = {}
    workers: list[FleetWorker] = []
    try:
        for host in hosts:
            pools[host] = _pool(host, root)
        nodes_before = {n: (rss(pid), cluster.status(n)["memory"]) for n, pid in cluster.pids().items()}
        amqp_url = ";".join(cluster.urls)
        began = time.monotonic()
        workers = [FleetWorker(host, prefix, amqp_url, root, root / f"state-{host}") for host in hosts]
        waiting = list(workers)
        while waiting:
            if time.monotonic() - began > 60 + 3 * size:
                raise RuntimeError(f"{len(waiting)} of {size} workers not ready after {time.monotonic() - began:.0f} s")
            waiting = [w for w in waiting if not w.ready()]
            time.sleep(0.5)
        table.add(Row(area, "fleet start: every worker ready", f"{time.monotonic() - began:.1f} s", "", None, "", None))
        _measure(table, area, cluster, prefix, workers, nodes_before)
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.wait()
        for name, pool in pools.items():
            pool.remove()
            _remove_pool_named(name)  # when libvirtd restarted meanwhile, remove() found its connection gone
        _delete_broker_objects(cluster.urls, prefix, hosts)


def _pool(name: str, root: Path, patience: float = 120) -> BenchPool:
    """A dir pool with its 1 MiB info.raw, waiting out a libvirtd that restarts (this machine's
    libvirtd is shared: other users restart it)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            pool = BenchPool(name, root)
            pool.volume("info.raw", MiB)
            return pool
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            _remove_pool_named(name)


def _remove_pool_named(name: str) -> None:
    """Pool `name` and its volumes, if it is still there, on a connection of its own."""
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError:
        return
    try:
        pool = conn.storagePoolLookupByName(name)
        for volume in pool.listAllVolumes(0):
            volume.delete(0)
        pool.destroy()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def _measure(table: Table, area: str, cluster: Cluster, prefix: str, workers: list[FleetWorker],
             nodes_before: dict[int, tuple[int, dict]]) -> None:
    size = len(workers)
    hosts = [w.host_id for w in workers]
    client = FleetClient(cluster.urls[0], prefix)
    try:
        info = [(h, "volume.info", {"pool": h, "name": "info.raw"}) for h in hosts]
        client.pipelined(info * 20, IN_FLIGHT_PER_HOST * size)  # warm-up
        client.expect_succeeded("volume.info")
        count = max(5000, 100 * size)
        rate = client.pipelined((info * (count // size + 1))[:count], IN_FLIGHT_PER_HOST * size)
        client.expect_succeeded("volume.info")
        every = [x for h in hosts for x in client.latencies[h]]
        worst = max(percentile(client.latencies[h], 0.99) for h in hosts)
        table.add(Row(area, f"volume.info pipelined over {size} hosts, {IN_FLIGHT_PER_HOST * size} in flight",
                      f"{rate:,.0f}/s", f"{rate / size:,.0f}/s per host", None, "", None))
        table.add(Row(area, "volume.info p50 / p99 across hosts", f"{ms(percentile(every, 0.5))} / "
                      f"{ms(percentile(every, 0.99))}", f"worst host p99 {ms(worst)}", None, "", None))

        # Creates only: a delete looks for volumes built on the one it deletes, and here every
        # other worker's volumes are in the same libvirtd for it to look through (not so on a fleet).
        per_host = max(20, 2000 // size)
        counter = EventCounter(cluster.urls[1], prefix)
        try:
            sent_at = time.perf_counter()
            creates = client.pipelined([(h, "volume.create", {"pool": h, "name": f"e{k:04d}.raw", "capacity": MiB})
                                        for k in range(per_host) for h in hosts], IN_FLIGHT_PER_HOST * size)
            client.expect_succeeded("volume.create")
            expected = per_host * size
            deadline = time.monotonic() + 60
            while counter.command_made < expected and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            counter.close()
        if counter.command_made < expected:
            raise RuntimeError(f"{counter.command_made} of {expected} command-made events arrived")
        span = counter.times[-1] - sent_at
        table.add(Row(area, f"volume.create pipelined over {size} hosts ({expected:,})", f"{creates:,.0f}/s",
                      f"{creates / size:,.1f}/s per host", None, "", None))
        table.add(Row(area, "volume.created events through the events exchange",
                      f"{counter.command_made / span:,.0f}/s",
                      f"{len(counter.times) - counter.command_made:,} other events meanwhile", None, "", None))

        rss_workers = sorted(rss(w.process.pid) for w in workers)
        table.add(Row(area, "worker RSS: mean / max", f"{sum(rss_workers) / size / MiB:.0f} / "
                      f"{rss_workers[-1] / MiB:.0f} MiB", "", None, "", None))
        connections = _connections(cluster, prefix)
        channels = sorted(sum(c for _, c in connections.get(h, [])) for h in hosts)
        per_node = defaultdict(int)
        for links in connections.values():
            for node, _ in links:
                per_node[node] += 1
        conns = sorted(len(connections.get(h, [])) for h in hosts)
        table.add(Row(area, "broker connections / channels per worker (min-max)",
                      f"{conns[0]}-{conns[-1]} / {channels[0]}-{channels[-1]}",
                      "workers per node " + " ".join(f"n{n}:{per_node[n]}" for n in sorted(per_node)), None, "", None))
        queues = defaultdict(int)
        for name, kind in cluster.rows("list_queues", "name", "type"):
            if name.startswith(f"{prefix}."):
                queues[kind] += 1
        table.add(Row(area, "queues of the fleet by type", " ".join(f"{k}:{v}" for k, v in sorted(queues.items())),
                      "", None, "", None))
        totals = defaultdict(int)
        for n, pid in sorted(cluster.pids().items()):
            before_rss, before = nodes_before[n]
            after = cluster.status(n)["memory"]
            grown = rss(pid) - before_rss
            quorum = after["quorum_queue_procs"] - before["quorum_queue_procs"]
            conn_mem = sum(after[k] - before[k] for k in ("connection_readers", "connection_writers",
                                                           "connection_channels", "connection_other"))
            totals["rss"] += grown
            totals["quorum"] += quorum
            totals["connections"] += conn_mem
            table.add(Row(area, f"node {n} RSS (growth per worker): quorum queue procs / connections",
                          f"{rss(pid) / MiB:.0f} MiB ({grown / size / 1024:+.0f} KiB)",
                          f"{quorum / size / 1024:.0f} / {conn_mem / size / 1024:.0f} KiB per worker", None, "", None))
        table.add(Row(area, "three nodes together, per worker: RSS growth / quorum queue procs / connections",
                      f"{totals['rss'] / size / 1024:+.0f} KiB", f"{totals['quorum'] / size / 1024:.0f} / "
                      f"{totals['connections'] / size / 1024:.0f} KiB", None, "", None))

    finally:
        client.close()
    resumed, victim, on_victim = _resume_after_node_kill(cluster, prefix, hosts, connections)
    ordered = sorted(resumed.values())
    table.add(Row(area, f"resume after SIGKILL of node {victim} ({on_victim} workers on it): p50 / max",
                  f"{ordered[len(ordered) // 2]:.2f} / {ordered[-1]:.2f} s",
                  f"{sum(1 for t in ordered if t > 1.0)} hosts over 1 s", None, "", None))


def _connections(cluster: Cluster, prefix: str) -> dict[str, list[tuple[int, int]]]:
    """Host id -> [(node, channels)] of each connection its worker has open."""
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for client_properties, channels, address in cluster.rows("list_connections", "client_properties", "channels",
                                                             "host"):
        marker = f'"storage-worker {prefix}-h'
        if marker in client_properties:
            host = client_properties.split('"storage-worker ', 1)[1].split('"', 1)[0]
            found[host].append((cluster.node_of_address(address), int(channels)))
    return found


def _resume_after_node_kill(cluster: Cluster, prefix: str, hosts: list[str],
                            connections: dict[str, list[tuple[int, int]]]) -> tuple[dict[str, float], int, int]:
    """SIGKILL the node most workers use; seconds from the kill to each host's first answer to a
    command sent after it. The node is started again before returning."""
    per_node: dict[int, int] = defaultdict(int)
    for links in connections.values():
        for node, _ in links:
            per_node[node] += 1
    victim = max(per_node, key=per_node.get)
    survivor = next(n for n in (1, 2, 3) if n != victim)
    client = FleetClient(cluster.urls[survivor - 1], prefix)
    resumed: dict[str, float] = {}
    try:
        cluster.run("kill", str(victim))
        killed = time.perf_counter()
        last_probe: dict[str, float] = {}
        while len(resumed) < len(hosts):
            now = time.perf_counter()
            if now - killed > 180:
                raise RuntimeError(f"{len(hosts) - len(resumed)} hosts still silent 180 s after the node kill")
            due = [h for h in hosts if h not in resumed and now - last_probe.get(h, 0.0) > 0.5]
            if due:
                client.new_channel()
            for host in due:
                client.send(host, "volume.info", {"pool": host, "name": "info.raw"})
                last_probe[host] = now
            client.connection.process_data_events(time_limit=0.05)
            for host, times in client.answered_at.items():
                if host not in resumed and times:
                    resumed[host] = times[0] - killed
        client.expect_succeeded("volume.info after the node kill")
    finally:
        client.close()
        cluster.run("restart", str(victim), timeout=300)
    return resumed, victim, per_node[victim]


def _delete_broker_objects(urls: list[str], prefix: str, hosts: list[str]) -> None:
    connection = pika.BlockingConnection([pika.URLParameters(url) for url in urls])
    try:
        channel = connection.channel()
        for queue in [f"{prefix}.commands.{h}" for h in hosts] + [f"{prefix}.dead", f"{prefix}.events.stream"]:
            channel.queue_delete(queue)
        for exchange in ("commands", "results", "events", "dlx"):
            channel.exchange_delete(f"{prefix}.{exchange}")
    finally:
        connection.close()
