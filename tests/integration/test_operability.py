"""Metrics, health and readiness on METRICS_PORT, against a worker doing real work."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import ok, wait_for
from tests.integration.test_libvirt_reconnect import start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', metric))
        if metric.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def test_metrics_count_commands_retries_events_and_pools(make_worker):
    port = free_port()
    harness = make_worker(metrics_port=port)
    client = harness.client()
    pool = harness.name("pool")
    ok(client.call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(harness.root / pool)},
                                   "build": True, "start": True}))
    for index in range(3):
        ok(client.call("volume.create", {"pool": pool, "name": f"secret-name-{index}.raw", "capacity": 2**20}))
    client.call("volume.info", {"pool": pool, "name": "absent"})
    wait_for(lambda: sample(get(port, "/metrics")[1], "storage_worker_pool_capacity_bytes", pool=pool), 10,
             "the pool gauges")
    status, text = get(port, "/metrics")
    assert status == 200
    assert sample(text, "storage_worker_commands_total", op="volume.create", status="succeeded") == 3
    assert sample(text, "storage_worker_commands_total", op="volume.info", status="failed") == 1
    assert sample(text, "storage_worker_command_duration_seconds_count", op="volume.create") == 3
    assert sample(text, "storage_worker_events_published_total", type="storage.volume.created") >= 3
    assert sample(text, "storage_worker_broker_connected") == 1
    assert sample(text, "storage_worker_libvirt_connected") == 1
    assert sample(text, "storage_worker_journal_commands") >= 5
    assert sample(text, "storage_worker_commands_in_flight") == 0
    assert sample(text, "storage_worker_pool_available_bytes", pool=pool) > 0
    assert "secret-name" not in text, "volumes are never a label"


def test_health_and_readiness(make_worker):
    port = free_port()
    harness = make_worker(metrics_port=port)
    assert get(port, "/healthz") == (200, "ok\n")
    wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "ready")
    assert get(port, "/nothing")[0] == 404
    stop_libvirtd()
    try:
        status, body = wait_for(lambda: (r := get(port, "/readyz"))[0] == 503 and r, 15, "not ready without libvirt")
        assert "libvirt" in body
        assert get(port, "/healthz")[0] == 200, "alive all the same"
    finally:
        start_libvirtd()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "ready again")
    assert ok(harness.client().call("host.info", {}))["host_id"] == harness.host
