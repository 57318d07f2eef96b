"""Delivery guarantees under faults (docs/contract.md "Delivery guarantees"), with real processes, the real
broker and libvirtd.

Each workload is 500 commands over 100 volumes: create, three grows, then delete (even volumes) or a
fourth grow (odd volumes). Each scenario prints: commands sent, results received, duplicates, lost,
double side effects — and asserts lost == 0, double side effects == 0, exactly one distinct
non-duplicate result per id, and the libvirt state the workload implies.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time

import libvirt
import pika
import pytest

from tests.conftest import AMQP_URL, LIBVIRT_URI, unique
from tests.integration.conftest import (broker_connection_pid, delete_broker_objects, rabbitmqctl, remove_pools,
                                        wait_for)
from tests.integration.conftest import queue_depth as queue_messages
from tests.integration.processes import CLI, WorkerProcess, Workload
from tests.integration.test_libvirt_reconnect import libvirtd_answers, start_libvirtd, stop_libvirtd
from worker.config import Settings

pytestmark = pytest.mark.integration

MiB = 2**20
VOLUMES = 100


@pytest.fixture
def rig(broker_ok, tmp_path):
    """A pool, a worker process factory, and a workload, all under one unique tag."""
    tag = unique("f")
    prefix = f"test-{tag}"
    root = tmp_path / "root"
    root.mkdir()
    pool = f"{tag}-pool"
    conn = libvirt.open(LIBVIRT_URI)
    handle = conn.storagePoolDefineXML(f"<pool type='dir'><name>{pool}</name><target><path>{root / pool}"
                                       f"</path></target></pool>", 0)
    handle.build(0)
    handle.create(0)
    conn.close()
    workers: list[WorkerProcess] = []

    class Rig:
        def __init__(self):
            self.tag, self.prefix, self.pool, self.root = tag, prefix, pool, root
            self.state_dir = tmp_path / "state"
            self.amqp_url = AMQP_URL
            self.workload = Workload(prefix, tag)

        def use_broker(self, amqp_url: str) -> None:
            """Workers and workload on another broker (a node of the dev cluster) from now on."""
            self.workload.close()
            self.amqp_url = amqp_url
            self.workload = Workload(prefix, tag, amqp_url)

        def worker(self, **settings) -> WorkerProcess:
            process = WorkerProcess(host_id=tag, prefix=prefix, state_dir=self.state_dir, allowed_root=root,
                                    log_path=tmp_path / f"worker-{len(workers)}.log",
                                    **{"amqp_url": self.amqp_url, **settings})
            workers.append(process)
            return process

        def journal_row(self, command_id: str) -> tuple[str, float] | None:
            """(state, updated_at) of a command in the worker's journal, read as an operator would."""
            db = sqlite3.connect(self.state_dir / "journal.sqlite3", timeout=10)
            try:
                return db.execute("SELECT state, updated_at FROM commands WHERE id = ?", (command_id,)).fetchone()
            finally:
                db.close()

        def journal_state(self, command_id: str) -> str | None:
            row = self.journal_row(command_id)
            return None if row is None else row[0]

        def reruns(self) -> int:
            """How often the faults hit work in flight: commands a worker ran again because an
            earlier run did not finish, resumed from the journal, or whose stored result it had to
            publish again (each converges, so none repeats its side effect)."""
            marks = ('"running again a command an earlier run did not finish"',
                     '"resuming a command its owner left unfinished"',
                     '"publishing a result the broker never confirmed"')
            return sum(process.log_path.read_text().count(mark) for process in workers for mark in marks)

        def allocated_volume(self, name: str, size: int) -> None:
            """A fully allocated volume, made directly with libvirt (slow to wipe: a long job)."""
            conn = libvirt.open(LIBVIRT_URI)
            try:
                conn.storagePoolLookupByName(self.pool).createXML(
                    f"<volume><name>{name}</name><capacity>{size}</capacity><allocation>{size}</allocation>"
                    "</volume>", 0)
            finally:
                conn.close()

        def unsettled(self) -> int:
            """Messages of the commands queue that are ready or delivered but not acknowledged."""
            queue = f"{prefix}.commands.{tag}"
            for line in rabbitmqctl("list_queues", "name", "messages").splitlines():
                name, _, count = line.partition("\t")
                if name == queue:
                    return int(count)
            raise AssertionError(f"queue {queue} not found")

        def queue_depth(self) -> int:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                queue = f"{prefix}.commands.{tag}"
                return connection.channel().queue_declare(queue, passive=True).method.message_count
            finally:
                connection.close()

    rig = Rig()
    yield rig
    for process in workers:
        process.stop()
    rig.workload.close()
    if not libvirtd_answers():
        start_libvirtd()
    remove_pools(f"{tag}-")
    delete_broker_objects(Settings(host_id=tag, prefix=prefix), rig.amqp_url)


@pytest.fixture
def node_rig(rig, rabbit_cluster):
    """The rig on node 1 of the dev cluster: its faults (a broker restart, a memory alarm) stay away
    from the machine's own broker, which other work uses."""
    rig.use_broker(rabbit_cluster.url(1))
    rig.ctl = lambda *args: rabbit_cluster.ctl(1, "-q", *args)
    return rig


def workload_plan(pool: str) -> tuple[list[tuple[str, dict]], dict[str, int]]:
    """The 500 commands, round by round, and the final capacity each volume must have."""
    names = [f"v{i:03d}.raw" for i in range(VOLUMES)]
    plan = [("volume.create", {"pool": pool, "name": name, "capacity": MiB}) for name in names]
    for size in (2, 3, 4):
        plan += [("volume.resize", {"pool": pool, "name": name, "capacity": size * MiB}) for name in names]
    plan += [("volume.delete", {"pool": pool, "name": name}) if index % 2 == 0 else
             ("volume.resize", {"pool": pool, "name": name, "capacity": 5 * MiB}) for index, name in enumerate(names)]
    return plan, {name: 5 * MiB for index, name in enumerate(names) if index % 2 == 1}


def send_workload(rig, faults=(), seconds: float = 10.0) -> dict[str, int]:
    """Send the workload paced over `seconds` while another thread injects each fault at a random
    moment of that span, so that every fault meets commands in flight."""
    plan, expected = workload_plan(rig.pool)
    moments = sorted(random.uniform(0.1 * seconds, 0.9 * seconds) for _ in faults)
    errors: list[BaseException] = []

    def inject() -> None:
        began = time.monotonic()
        try:
            for moment, fault in zip(moments, faults):
                time.sleep(max(0.0, began + moment - time.monotonic()))
                fault()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    injector = threading.Thread(target=inject)
    injector.start()
    began = time.monotonic()
    for index, (op, args) in enumerate(plan):
        time.sleep(max(0.0, began + seconds * index / len(plan) - time.monotonic()))
        rig.workload.send(op, args)
    injector.join()
    assert not errors, errors
    return expected


def libvirt_state(pool: str) -> dict[str, int]:
    conn = libvirt.open(LIBVIRT_URI)
    try:
        handle = conn.storagePoolLookupByName(pool)
        handle.refresh(0)
        return {volume.name(): volume.info()[1] for volume in handle.listAllVolumes(0)}
    finally:
        conn.close()


def check(rig, scenario: str, expected: dict[str, int]) -> None:
    tally = rig.workload.tally
    tally.report(scenario, reruns=rig.reruns())
    assert len(tally.sent) == 500
    assert tally.missing() == [], f"{len(tally.missing())} commands got no result"
    assert tally.repeated() == [], "an id got two different non-duplicate results"
    assert tally.double_side_effects() == [], "a command's side effect happened twice"
    assert dict(tally.statuses()) == {"succeeded": 500}
    assert libvirt_state(rig.pool) == expected


def test_sigkill_three_times_loses_nothing_and_repeats_nothing(rig):
    worker = rig.worker().start()
    worker.wait_online()

    def kill_and_restart():
        worker.kill()
        worker.start()
        worker.wait_online()

    # Sent faster than the worker works through them: every kill finds commands in flight.
    expected = send_workload(rig, [kill_and_restart] * 3, seconds=3)
    rig.workload.wait_all(timeout=120)
    assert worker.starts == 4
    check(rig, "SIGKILL x3", expected)
    assert rig.reruns() > 0, "the kills met commands in flight"


def test_broker_connection_closed_three_times_and_one_broker_restart(node_rig):
    rig = node_rig
    worker = rig.worker().start()
    worker.wait_online()

    faults_done = [0]

    def consuming_again() -> None:
        """Each fault waits until the worker has recovered from the one before."""
        wait_for(lambda: worker.log_path.read_text().count('"consuming"') > faults_done[0], 60,
                 "the worker to consume again")
        faults_done[0] += 1

    def close_worker_connection():
        consuming_again()
        pid = wait_for(lambda: broker_connection_pid(f"storage-worker {rig.tag}", rig.ctl), 60,
                       "the worker's connection")
        rig.ctl("close_connection", pid, "fault test")

    def restart_broker():
        consuming_again()
        rig.ctl("stop_app")
        rig.ctl("start_app")
        rig.ctl("await_startup")

    faults = [close_worker_connection] * 3 + [restart_broker]
    random.shuffle(faults)
    expected = send_workload(rig, faults, seconds=6)
    rig.workload.wait_all(timeout=180)
    assert worker.running(), "the worker survived the broker faults"
    consuming_again()  # after the last fault too (its backoff may outlast the workload)
    assert faults_done[0] == 5, "it reconnected after every fault"
    check(rig, "broker: 3 connection closes + 1 restart", expected)


def test_libvirtd_restart_mid_workload(rig):
    worker = rig.worker().start()
    worker.wait_online()

    def restart_libvirtd():
        stop_libvirtd()
        time.sleep(1.0)
        start_libvirtd()

    expected = send_workload(rig, [restart_libvirtd], seconds=3)
    rig.workload.wait_all(timeout=180)
    check(rig, "libvirtd restart", expected)


def test_poison_and_undecodable_messages_end_in_the_dead_queue_and_nothing_else(rig):
    worker = rig.worker(delivery_limit=2).start()
    worker.wait_online()
    rig.allocated_volume("poison.raw", 2048 * MiB)
    undecodable = rig.workload.send("", {}, command_id="garbage-1", body=b"\x00 not a command")
    healthy = [rig.workload.send("host.info", {}) for _ in range(5)]
    # Settled before the poison comes: a command still unacknowledged when the worker dies is returned
    # to the queue and counted as a delivery like the poison, and three deaths in a row dead-letter it.
    wait_for(lambda: rig.workload.answered() and all(rig.workload.tally.originals(c) for c in healthy)
             and rig.unsettled() == 0, 30, "the healthy commands to be answered and acknowledged")
    # A command whose handling the worker never survives: it dies (here: is killed) every time it runs.
    poison = rig.workload.send("volume.delete", {"pool": rig.pool, "name": "poison.raw", "wipe": True},
                               command_id="poison-1")
    deliveries, last_start = 0, 0.0

    def started_again():
        row = rig.journal_row(poison)
        return row is not None and row[0] == "running" and row[1] > last_start and row

    while True:
        try:
            last_start = wait_for(started_again, 15, "the poison command to run again")[1]
        except AssertionError:
            break  # no longer delivered: the broker dead-lettered it
        deliveries += 1
        worker.kill()
        worker.start()
        worker.wait_online()
        assert deliveries <= 5, "the delivery limit never stopped the poison message"
    assert deliveries == 3, "delivered once plus delivery-limit (2) redeliveries"

    listing = subprocess.run([CLI, "dead", "list", "--json", "--host-id", rig.tag, "--prefix", rig.prefix,
                              "--amqp-url", AMQP_URL], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    dead = [json.loads(line) for line in listing.stdout.splitlines()]
    by_id = {(d["command_id"] or d["message_id"]): d for d in dead}
    assert set(by_id) == {undecodable, poison}, "only the poison and the undecodable message are dead"
    assert "delivery_limit" in by_id[poison]["reason"]
    assert "not JSON" in by_id[undecodable]["reason"] or "UTF-8" in by_id[undecodable]["reason"]

    # The operator replays the poison message once the cause is fixed (here: nobody kills the worker).
    replay = subprocess.run([CLI, "dead", "replay", poison, "--host-id", rig.tag, "--prefix", rig.prefix,
                             "--amqp-url", AMQP_URL], capture_output=True, text=True, timeout=30)
    assert replay.returncode == 0, replay.stderr
    wait_for(lambda: rig.workload.answered() and rig.workload.tally.originals(poison), 60, "the replayed result")
    assert rig.workload.tally.originals(poison)[0]["status"] == "succeeded"
    listing = subprocess.run([CLI, "dead", "list", "--json", "--host-id", rig.tag, "--prefix", rig.prefix,
                              "--amqp-url", AMQP_URL], capture_output=True, text=True, timeout=30)
    # Dead-lettering is at least once: a worker killed between the copy's confirm and the ack sends
    # the copy again on redelivery (identical), never loses it.
    remaining = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {d["message_id"] for d in remaining} == {undecodable}
    assert len({d["body"] for d in remaining}) == 1


def test_sigterm_drains_and_a_second_signal_exits_at_once(rig):
    worker = rig.worker(concurrency=1).start()
    worker.wait_online()
    rig.allocated_volume("slow.raw", 1024 * MiB)
    slow = rig.workload.send("volume.delete", {"pool": rig.pool, "name": "slow.raw", "wipe": True})
    # Writes: a read is not journaled before it runs, and the test looks for the prefetched one there.
    waiting = [rig.workload.send("volume.create", {"pool": rig.pool, "name": f"w{i}.raw", "capacity": MiB})
               for i in range(5)]
    wait_for(lambda: rig.journal_state(slow) == "running", 20, "the slow command to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    rig.workload.collect()
    assert rig.workload.tally.originals(slow)[0]["status"] == "succeeded", "the running command finished"
    assert not any(rig.workload.tally.originals(c) for c in waiting), "unstarted commands did not run"
    states = [rig.journal_state(c) for c in waiting]
    assert set(states) <= {None, "received"}, "none of them started"
    assert "received" in states, "one was prefetched (prefetch = 2 x concurrency) and handed back"
    assert rig.queue_depth() == 5, "they are all in the queue again"

    worker.start()
    worker.wait_online()
    rig.workload.wait_all(timeout=30)
    assert all(rig.workload.tally.originals(c)[0]["status"] == "succeeded" for c in waiting)

    rig.allocated_volume("slow2.raw", 2048 * MiB)
    slow2 = rig.workload.send("volume.delete", {"pool": rig.pool, "name": "slow2.raw", "wipe": True})
    wait_for(lambda: rig.journal_state(slow2) == "running", 20, "the second slow command to start")
    worker.signal(signal.SIGTERM)
    # Two signals that arrive before Python runs its handler count as one: wait until it ran.
    wait_for(lambda: worker.log_path.read_text().count("signal received: draining") == 2, 10, "the drain to begin")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) != 0
    assert time.monotonic() - started < 3, "the second signal exits at once"


def test_hot_standby_takes_over_with_the_shared_journal(rig):
    active = rig.worker().start()
    active.wait_online()
    standby = rig.worker().start()
    standby.wait_online()
    expected = send_workload(rig, [active.kill], seconds=1.5)
    rig.workload.wait_all(timeout=120)
    assert standby.running()
    check(rig, "hot standby takeover", expected)
    assert rig.reruns() > 0, "the standby took over commands the active one had in flight"


def test_journal_owned_long_job_is_resumed_by_the_restarted_worker(rig):
    worker = rig.worker().start()
    worker.wait_online()
    rig.allocated_volume("big.raw", 2048 * MiB)
    wipe = rig.workload.send("volume.wipe", {"pool": rig.pool, "name": "big.raw"})
    wait_for(lambda: rig.journal_state(wipe) == "running", 20, "the wipe to start")
    # A long job is acknowledged as soon as the journal holds it, long before it ends ...
    wait_for(lambda: queue_messages(f"{rig.prefix}.commands.{rig.tag}") == 0, 10,
             "the wipe's delivery to be acknowledged (no message ready or unacknowledged)")
    worker.kill()
    # ... so the broker has nothing to redeliver: the restarted worker resumes it from the journal.
    assert rig.queue_depth() == 0
    worker.start()
    worker.wait_online()
    rig.workload.wait_all(timeout=120)
    result = rig.workload.tally.originals(wipe)
    assert len(result) == 1 and result[0]["status"] == "succeeded"


def test_a_clone_killed_mid_copy_is_copied_again_by_the_restarted_worker(rig):
    """The worker's own copy leaves a volume of the clone's name, size and format holding part of
    the data when the worker is killed: the resumed command must copy again, not take it as done."""
    worker = rig.worker().start()
    worker.wait_online()
    rig.allocated_volume("src.raw", 2048 * MiB)
    source = rig.root / rig.pool / "src.raw"
    with open(source, "r+b") as handle:
        for offset in range(0, 2048 * MiB, 2 * MiB):
            handle.seek(offset)
            handle.write(random.randbytes(MiB))
    clone = rig.workload.send("volume.clone", {"pool": rig.pool, "source": "src.raw", "name": "copy.raw",
                                               "reflink": False})
    target = rig.root / rig.pool / "copy.raw"
    wait_for(lambda: target.exists() and target.stat().st_blocks * 512 > 64 * MiB, 60, "the copy to be under way")
    worker.kill()
    worker.start()
    worker.wait_online()
    rig.workload.wait_all(timeout=300)
    result = rig.workload.tally.originals(clone)
    assert len(result) == 1 and result[0]["status"] == "succeeded", result
    assert result[0]["result"]["changed"] is True
    assert subprocess.run(["cmp", str(source), str(target)], capture_output=True).returncode == 0
    assert "removing a clone whose copy never finished" in worker.log_path.read_text()


def test_memory_alarm_holds_results_until_it_clears(node_rig):
    rig = node_rig
    worker = rig.worker().start()
    worker.wait_online()
    original = rig.ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    assert re.fullmatch(r"[0-9.]+", original), f"cannot restore a watermark of {original!r}"
    rig.allocated_volume("slow.raw", 1024 * MiB)
    # Twenty results that can only be published after a few seconds of wiping: during the alarm.
    sent = [rig.workload.send("volume.delete", {"pool": rig.pool, "name": "slow.raw", "wipe": True})]
    sent += [rig.workload.send("volume.info", {"pool": rig.pool, "name": "slow.raw"}) for _ in range(20)]
    try:
        rig.ctl("set_vm_memory_high_watermark", "0.00001")
        wait_for(lambda: "blocked this connection" in worker.log_path.read_text(), 30,
                 "the worker to see its connection blocked")
        time.sleep(2)
    finally:
        rig.ctl("set_vm_memory_high_watermark", original)
    rig.workload.wait_all(timeout=60)
    assert all(len(rig.workload.tally.originals(c)) == 1 for c in sent)
    assert worker.running()
    assert "the broker unblocked this connection" in worker.log_path.read_text()
