"""AMQP_URL naming several broker nodes, one of which does not answer: the worker, the client and
doctor go to the node that does. (Failover across a real three-node cluster, with nodes killed and
cut off, is in tests/integration/test_cluster_faults.py.)"""

from __future__ import annotations

import pytest

from messages.client import StorageClient
from tests.conftest import AMQP_URL
from tests.integration.conftest import ok
from tests.integration.test_doctor import doctor, place  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

DOWN = "amqp://guest:guest@127.0.0.1:1/%2F"  # a node that refuses connections


def test_a_worker_and_a_client_skip_a_node_that_does_not_answer(make_worker):
    harness = make_worker(amqp_url=f"{DOWN};{AMQP_URL}")
    with StorageClient([DOWN, AMQP_URL], host_id=harness.host, prefix=harness.settings.prefix) as client:
        pool = harness.running_pool(client)
        assert ok(client.call("volume.list", {"pool": pool})) == {"volumes": []}


def test_doctor_reports_which_nodes_answer(place):
    done, checks = doctor(place, amqp_url=f"{DOWN};{AMQP_URL}")
    broker = checks["broker"]
    assert broker["status"] == "warn", broker
    assert broker["detail"].startswith("1 of 2 nodes reachable"), broker
    assert "127.0.0.1:1" in broker["detail"] and "connection refused" in broker["detail"]
    assert checks["permissions"]["status"] == "ok", "the checks go on with the node that answered"


def test_doctor_refuses_nodes_that_cannot_be_one_cluster_in_words(place):
    done, checks = doctor(place, amqp_url=f"{AMQP_URL};amqp://other:secret-x@127.0.0.1:5672/%2F")
    assert done.returncode == 1 and checks["settings"]["status"] == "fail", checks
    assert "node 2 of AMQP_URL (amqp://other:***@127.0.0.1:5672/%2F) has another credentials than node 1" \
        in checks["settings"]["detail"]
    assert "secret-x" not in done.stdout + done.stderr
