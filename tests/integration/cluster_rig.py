"""Workers of two hosts on the three-node cluster, a mixed workload for them, and the checks every
cluster fault scenario makes (tests/integration/test_cluster_faults*.py).

Host "a" runs an active worker and a hot standby (same host id and STATE_DIR; the command queue's
single active consumer picks one), host "b" a single worker. Each host has a dir pool of its own.
The workload is 40 volumes per host: create, info, grow, then delete (even) or info (odd): 320
commands, sent paced while a fault hits the cluster.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pika
import pika.exceptions

from tests.conftest import LIBVIRT_URI, unique
from tests.integration.cluster import RabbitCluster
from tests.integration.cluster_workload import CONNECTION_TROUBLE, ClusterWorkload, parameters
from tests.integration.conftest import remove_pools, wait_for
from tests.integration.processes import WorkerProcess
from messages.client import StorageClient
from worker.config import Settings

MiB = 2**20
VOLUMES = 40  # per host: 4 commands each, 320 in all
WRITES = ("volume.create", "volume.resize", "volume.delete")
STUCK_EVENT = 15.0  # seconds: an event parked longer than a confirm takes plus a channel replacement
#: one line per scenario, printed as it ends (scripts/test ... -s shows them)
REPORT: list[str] = []


class ClusterRig:
    def __init__(self, cluster: RabbitCluster, tmp_path: Path):
        self.cluster = cluster
        self.tag = unique("cf")
        self.prefix = f"test-{self.tag}"
        self.hosts = [f"{self.tag}a", f"{self.tag}b"]
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self.pools = {host: f"{host}-pool" for host in self.hosts}
        conn = libvirt.open(LIBVIRT_URI)
        try:
            for pool in self.pools.values():
                handle = conn.storagePoolDefineXML(f"<pool type='dir'><name>{pool}</name><target><path>"
                                                   f"{self.root / pool}</path></target></pool>", 0)
                handle.build(0)
                handle.create(0)
        finally:
            conn.close()
        self.workload = ClusterWorkload(cluster.urls, self.prefix, self.hosts)
        self.fault_at: float | None = None

    # ---- workers -----------------------------------------------------------------------------

    def state_dir(self, host: str) -> Path:
        return self.tmp_path / f"state-{host}"

    def worker(self, host: str) -> WorkerProcess:
        process = WorkerProcess(host_id=host, prefix=self.prefix, state_dir=self.state_dir(host),
                                allowed_root=self.root, log_path=self.tmp_path / f"worker-{len(self.workers)}.log",
                                amqp_url=self.cluster.url_list, concurrency=4)
        self.workers.append(process)
        return process

    def start_workers(self) -> tuple[WorkerProcess, WorkerProcess, WorkerProcess]:
        """Host a's active worker (started first: the queue's single active consumer), its standby,
        and host b's worker, all online."""
        active = self.worker(self.hosts[0]).start()
        active.wait_online(60)
        standby = self.worker(self.hosts[0]).start()
        other = self.worker(self.hosts[1]).start()
        standby.wait_online(60)
        other.wait_online(60)
        return active, standby, other

    @staticmethod
    def connected_node(worker: WorkerProcess) -> int:
        """The node (1-3) the worker consumes from now: the broker of its last connect before its last
        "consuming" (AMQP ports 5681-5683)."""
        node = consuming = None
        for line in worker.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("message") == "connecting to the broker":
                node = int(record["broker"].split(":")[1].split("/")[0]) - 5680
            elif record.get("message") == "consuming" and node is not None:
                consuming = node
        assert consuming is not None, f"{worker.log_path} shows no connection that consumes"
        return consuming

    def command_queue(self, host: str) -> str:
        return Settings(host_id=host, prefix=self.prefix).topology.command_queue

    def reruns(self) -> int:
        """How often the fault met work in flight (commands run again, resumed, waited for in the
        peer that ran them, results published again or dropped with a lost delivery: each
        converges, none repeats its side effect)."""
        marks = ('"running again a command an earlier run did not finish"',
                 '"resuming a command its owner left unfinished"',
                 '"publishing a result the broker never confirmed"',
                 '"another process of this host runs the command; waiting for its result"',
                 '"dropping the result of a read whose delivery went back to the queue"')
        return sum(w.log_path.read_text().count(mark) for w in self.workers for mark in marks)

    # ---- workload ----------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, str, dict]]:
        """(host, op, args) in sending order: round by round, the two hosts interleaved."""
        rounds: list[list[tuple[str, str, dict]]] = [[], [], [], []]
        for index in range(VOLUMES):
            for host in self.hosts:
                pool, name = self.pools[host], f"v{index:03d}.raw"
                rounds[0].append((host, "volume.create", {"pool": pool, "name": name, "capacity": MiB}))
                rounds[1].append((host, "volume.info", {"pool": pool, "name": name}))
                rounds[2].append((host, "volume.resize", {"pool": pool, "name": name, "capacity": 2 * MiB}))
                rounds[3].append((host, "volume.delete", {"pool": pool, "name": name}) if index % 2 == 0
                                 else (host, "volume.info", {"pool": pool, "name": name}))
        return [step for one in rounds for step in one]

    def run(self, fault: Callable[[], None], seconds: float = 8.0, at: tuple[float, float] = (0.2, 0.4),
            timeout: float = 180) -> None:
        """Send the plan paced over `seconds` while another thread runs `fault` at a random moment
        within the fraction `at` of that span (so it meets commands in flight and leaves commands
        to send after it); then wait for every result."""
        plan = self.plan()
        moment = random.uniform(*at) * seconds
        errors: list[BaseException] = []

        def inject() -> None:
            time.sleep(moment)
            try:
                fault()
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        injector = threading.Thread(target=inject)
        injector.start()
        began = time.monotonic()
        for index, (host, op, args) in enumerate(plan):
            time.sleep(max(0.0, began + seconds * index / len(plan) - time.monotonic()))
            self.workload.send(host, op, args)
        injector.join()
        assert not errors, errors
        self.workload.wait_all(timeout)

    def hit(self) -> None:
        """The moment the fault hits: time to resume counts from here."""
        self.fault_at = time.monotonic()

    def calls_through_the_client(self, host: str, until: threading.Event) -> tuple[threading.Thread, list]:
        """StorageClient.call("pool.info") for `host` over and over, on a thread, until `until` is
        set; the list gets each call's status, or the exception that ended the calls."""
        outcomes: list = []

        def call() -> None:
            try:
                with StorageClient(self.cluster.url_list, host_id=host, prefix=self.prefix) as client:
                    while not until.wait(0.05):
                        outcomes.append(client.call("pool.info", {"name": self.pools[host]}, timeout=90).status.value)
            except Exception as error:  # noqa: BLE001 - reported by the test
                outcomes.append(error)

        thread = threading.Thread(target=call, name="storage-client-calls")
        thread.start()
        return thread, outcomes

    # ---- checks ------------------------------------------------------------------------------

    def libvirt_state(self) -> dict[str, dict[str, int]]:
        conn = libvirt.open(LIBVIRT_URI)
        try:
            state = {}
            for host, pool in self.pools.items():
                handle = conn.storagePoolLookupByName(pool)
                handle.refresh(0)
                state[host] = {v.name(): v.info()[1] for v in handle.listAllVolumes(0)}
            return state
        finally:
            conn.close()

    def expected_state(self) -> dict[str, dict[str, int]]:
        """The volumes the succeeded commands leave, by host: created, grown if the grow succeeded,
        gone if the delete succeeded."""
        state: dict[str, dict[str, int]] = {host: {} for host in self.hosts}
        steps = {"volume.create": 0, "volume.resize": 1, "volume.delete": 2}
        done = sorted(((steps[op], host, args) for c, (host, op, args) in self.workload.sent.items()
                       if op in steps and self.workload.result(c)["status"] == "succeeded"), key=lambda s: s[0])
        for step, host, args in done:
            if step < 2:  # made, or grown
                state[host][args["name"]] = args["capacity"]
            else:
                state[host].pop(args["name"], None)
        return state

    def parked_events(self, older_than: float = 0.0) -> list[tuple]:
        """Events the journals hold unconfirmed (their outbox) for more than `older_than` seconds:
        (host, seq, routing key, age)."""
        found = []
        for host in self.hosts:
            db = sqlite3.connect(self.state_dir(host) / "journal.sqlite3", timeout=10)
            try:
                found += [(host, *row) for row in
                          db.execute("SELECT seq, routing_key, ? - created FROM outbox WHERE created < ?",
                                     (time.time(), time.time() - older_than))]
            finally:
                db.close()
        return found

    def check(self, scenario: str, resends_at_most: int = 40) -> str:
        workload = self.workload
        sent = len(workload.sent)
        lost = workload.missing()
        resume = workload.resumed_after(self.fault_at) if self.fault_at is not None else None
        line = (f"[cluster: {scenario}] sent={sent} results={sent - len(lost)} re-sends={workload.resends} "
                f"duplicates={workload.duplicates()} lost={len(lost)} "
                f"double_effects={len(workload.double_side_effects())} "
                f"resume={'-' if resume is None else f'{resume:.1f} s'} reruns={self.reruns()} "
                f"statuses={dict(workload.statuses())}")
        print(f"\n{line}", flush=True)
        REPORT.append(line)
        assert sent == 4 * VOLUMES * len(self.hosts)
        assert lost == [], f"{len(lost)} commands got no result, e.g. {lost[:3]}"
        conflicting = workload.conflicting()
        assert conflicting == [], (f"{len(conflicting)} ids got two different non-duplicate results, e.g. "
                                   f"{workload.sent[conflicting[0]][1] if conflicting else ''}: "
                                   f"{[workload.originals(c) for c in conflicting[:1]]}")
        assert workload.double_side_effects() == [], "a command's side effect happened twice"
        assert workload.resends <= resends_at_most, "re-sends are bounded"
        assert dict(workload.statuses()) == {"succeeded": sent}
        assert self.libvirt_state() == self.expected_state()
        made_events = [c for c, (_, op, _) in workload.sent.items() if op in WRITES]
        wait_for(lambda: all(workload.events_of(c) == 1 for c in made_events), 30,
                 "one event for every command that changed a volume")
        # Other pools of the shared libvirtd keep making pool events: none may stay parked long.
        try:
            wait_for(lambda: not self.parked_events(older_than=STUCK_EVENT), 2 * STUCK_EVENT,
                     "the journals' event outboxes to hold no event the broker left unconfirmed")
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.parked_events(older_than=STUCK_EVENT)}") from None
        assert resume is not None, "commands sent after the fault got results"
        return line

    # ---- cleanup -----------------------------------------------------------------------------

    def close(self) -> None:
        for process in self.workers:
            process.stop()
        self.workload.close(delete_queues=False)
        remove_pools(f"{self.tag}")
        # A queue with a member on a node that is down takes long to delete: every node up first.
        self.cluster.start()
        self.workload.delete_queues()
        self.delete_broker_objects()

    def delete_broker_objects(self) -> None:
        self.delete_topologies(self.cluster, self.prefix, self.hosts)

    @staticmethod
    def delete_topologies(cluster: RabbitCluster, prefix: str, hosts: list[str]) -> None:
        """The queues and exchanges workers of these hosts declared."""
        topologies = [Settings(host_id=host, prefix=prefix).topology for host in hosts]
        try:
            connection = pika.BlockingConnection(parameters(cluster.urls, "cluster-rig cleanup"))
        except CONNECTION_TROUBLE:
            return
        try:
            channel = connection.channel()
            for topology in topologies:
                for queue in (topology.command_queue, topology.dead_letter_queue, topology.event_stream):
                    channel.queue_delete(queue)
            first = topologies[0]
            for exchange in (first.commands_exchange, first.results_exchange, first.events_exchange,
                             first.dead_letter_exchange):
                channel.exchange_delete(exchange)
        except pika.exceptions.AMQPError:
            pass
        finally:
            if connection.is_open:
                connection.close()
