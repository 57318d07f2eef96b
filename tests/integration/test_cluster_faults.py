"""Delivery guarantees across the three-node cluster (issue 14): node loss, leader loss, rolling
restarts, a minority partition, the whole cluster stopped and started.

Each scenario runs 320 mixed commands over two host ids, one with a hot standby (tests/integration/
cluster_rig.py), while the fault hits, and prints one line: sent / results / re-sends / duplicates /
lost / double effects / time to resume. It asserts: every command exactly one terminal result (no
two different ones; identical re-sends counted and bounded), no side effect twice, libvirt state
equal to what succeeded, one event for each change and none left in a journal's outbox.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.cluster import RabbitCluster
from tests.integration.cluster_rig import ClusterRig

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
