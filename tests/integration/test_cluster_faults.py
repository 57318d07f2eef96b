"""Delivery guarantees across the three-node cluster (issue 14): node loss, leader loss, rolling
restarts, a minority partition, the whole cluster stopped and started.

Each scenario runs 320 mixed commands over two host ids, one with a hot standby (tests/integration/
cluster_rig.py), while the fault hits, and prints one line: sent / results / re-sends / duplicates /
lost / double effects / time to resume. It asserts: every command exactly one terminal result (no
two different ones; identical re-sends counted and bounded), no side effect twice, libvirt state
equal to what succeeded, one event for each change and none left in a journal's outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.cluster import RabbitCluster
from tests.integration.cluster_rig import ClusterRig
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(rabbit_cluster: RabbitCluster, libvirt_conn, tmp_path) -> Iterator[ClusterRig]:
    made = ClusterRig(rabbit_cluster, tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_sigkill_of_the_active_workers_node(rig):
    active, standby, other = rig.start_workers()
    victim = rig.connected_node(active)

    def kill():
        rig.hit()
        rig.cluster.kill(victim)

    rig.run(kill)
    assert active.running() and standby.running() and other.running()
    rig.check(f"SIGKILL node {victim} (the active worker's)")


def test_sigkill_of_the_leader_of_the_command_queue(rig):
    active, standby, other = rig.start_workers()
    leader = rig.cluster.leader(rig.command_queue(rig.hosts[0]))

    def kill():
        rig.hit()
        rig.cluster.kill(leader)

    # StorageClient calls go on across the election: a nacked command is sent again on a new channel,
    # a lost connection replaced through another node.
    done = threading.Event()
    caller, outcomes = rig.calls_through_the_client(rig.hosts[0], done)
    try:
        rig.run(kill)
    finally:
        done.set()
        caller.join(timeout=120)
    assert outcomes and set(outcomes) == {"succeeded"}, outcomes[-3:]
    assert rig.cluster.leader(rig.command_queue(rig.hosts[0])) != leader, "another node leads the queue"
    assert active.running() and standby.running() and other.running()
    rig.check(f"SIGKILL node {leader} (the command queue's leader); {len(outcomes)} StorageClient calls")


def test_rolling_restart_of_all_three_nodes(rig):
    active, standby, other = rig.start_workers()

    def rolling_restart():
        rig.hit()
        for node in (1, 2, 3):
            rig.cluster.halt(node)
            rig.cluster.restart(node)

    rig.run(rolling_restart, seconds=10, at=(0.1, 0.2))
    assert active.running() and standby.running() and other.running()
    rig.check("rolling restart of nodes 1, 2, 3")


def test_minority_partition_of_the_active_workers_node(rig):
    active, standby, other = rig.start_workers()
    victim = rig.connected_node(active)
    moved = []

    def cut():
        rig.hit()
        rig.cluster.cut(victim)
        try:
            wait_for(lambda: rig.connected_node(active) != victim and rig.connected_node(standby) != victim, 60,
                     f"host a's workers to leave node {victim}")
            moved.append(time.monotonic() - rig.fault_at)
        finally:
            rig.cluster.heal(victim)

    rig.run(cut, seconds=8, at=(0.2, 0.3))
    assert active.running() and standby.running() and other.running()
    rig.check(f"minority partition of node {victim} (the active worker's), healed after {moved[0]:.0f} s")
    rig.cluster.wait_formed(120)


def test_whole_cluster_stopped_and_started(rig):
    active, standby, other = rig.start_workers()

    def stop_and_start():
        rig.hit()
        rig.cluster.halt("all")
        rig.cluster.start()

    rig.run(stop_and_start, seconds=8, at=(0.3, 0.4))
    assert active.running() and standby.running() and other.running()
    rig.check("whole cluster stopped (SIGTERM) and started")
