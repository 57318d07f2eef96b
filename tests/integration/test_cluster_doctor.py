"""`storage-worker doctor` on the three-node cluster with RabbitMQ's management API: which nodes
answer, and the command queue's quorum as nodes go down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LIBVIRT_URI, unique
from tests.integration.cluster import RabbitCluster
from tests.integration.cluster_rig import ClusterRig
from tests.integration.conftest import wait_for
from tests.integration.processes import WorkerProcess

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))
NODES = (1, 2, 3)


def doctor(cluster: RabbitCluster, host: str, prefix: str, state_dir: Path) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STORAGE_WORKER_")}
    env["STORAGE_WORKER_STATE_DIR"] = str(state_dir)
    done = subprocess.run([CLI, "doctor", "--host-id", host, "--prefix", prefix, "--amqp-url", cluster.url_list,
                           "--libvirt-uri", LIBVIRT_URI, "--json"], capture_output=True, text=True, timeout=120,
                          env=env)
    return {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def on_every_node(cluster: RabbitCluster, *args: str) -> None:
    """rabbitmq-plugins ARGS on the three nodes at once (each call starts a VM of its own)."""
    with ThreadPoolExecutor(len(NODES)) as pool:
        list(pool.map(lambda n: cluster.plugins(n, *args), NODES))


@pytest.fixture
def management(rabbit_cluster: RabbitCluster):
    on_every_node(rabbit_cluster, "enable", "rabbitmq_management")
    try:
        yield rabbit_cluster
    finally:
        rabbit_cluster.start()  # every node up, to disable the plugin everywhere
        on_every_node(rabbit_cluster, "disable", "rabbitmq_management")


def test_doctor_counts_the_quorum_members_as_nodes_go_down(management, libvirt_conn, tmp_path):
    cluster = management
    host = unique("cd")
    prefix = f"test-{host}"
    worker = WorkerProcess(host_id=host, prefix=prefix, state_dir=tmp_path / "state", allowed_root=tmp_path,
                           log_path=tmp_path / "worker.log", amqp_url=cluster.url_list).start()
    try:
        worker.wait_online(60)
        queue = f"{prefix}.commands.{host}"

        def quorum() -> dict:
            return doctor(cluster, host, prefix, tmp_path / "doctor-state")["quorum_members"]

        check = wait_for(lambda: (c := quorum())["status"] == "ok" and c, 60, "the management API of a node")
        assert f"{queue}: 3 of 3 members online" in check["detail"], check

        cluster.kill(2)
        check = wait_for(lambda: (c := quorum())["status"] == "warn" and c, 60, "the quorum check to see node 2 down")
        assert "2 of 3 members online" in check["detail"] and cluster.node_name(2) not in \
            check["detail"].split("online (")[1].split(")")[0], check
        assert "losing 1 more member(s) stops the queue" in check["detail"], check
        broker = doctor(cluster, host, prefix, tmp_path / "doctor-state")["broker"]
        assert broker["status"] == "warn" and "2 of 3 nodes reachable" in broker["detail"], broker
    finally:
        worker.stop()
        cluster.start()
        ClusterRig.delete_topologies(cluster, prefix, [host])
