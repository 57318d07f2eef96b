"""Metrics, health and readiness on METRICS_PORT, against a worker doing real work."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import call_async, ok, queue_depth, wait_for
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
    pool = harness.running_pool(client)
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
    assert sample(text, "storage_worker_ready") == 1
    assert sample(text, "storage_worker_journal_writable") == 1
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


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs to hold a worker's state dir, and a way to fill it up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    filler = mount / "filler"

    def fill() -> None:
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass

    yield mount, fill, lambda: filler.unlink()
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_journal_disk_holds_commands_and_they_run_once_it_has_room(small_disk, make_worker, libvirt_conn):
    """A command whose record the journal cannot write neither runs nor goes back to the queue
    (that would spend its deliveries, then dead-letter it): it waits — and the commands behind it
    with it — the worker says why on /readyz, and it runs once there is room again."""
    mount, fill, free = small_disk
    port = free_port()
    harness = make_worker(state_dir=mount / "state", metrics_port=port)
    client = harness.client()
    pool = harness.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "before.raw", "capacity": 2**20}))
    fill()
    thread, out = call_async(harness.client, "volume.create", {"pool": pool, "name": "held.raw", "capacity": 2**20})
    status, body = wait_for(lambda: (r := get(port, "/readyz"))[0] == 503 and r, 15, "not ready: the journal")
    assert "journal" in body and "cannot be written" in body, body
    metrics = get(port, "/metrics")[1]
    assert sample(metrics, "storage_worker_journal_writable") == 0
    assert sample(metrics, "storage_worker_ready") == 0
    time.sleep(2)
    assert not out, "no result while the journal cannot be written"
    assert "held.raw" not in libvirt_conn.storagePoolLookupByName(pool).listVolumes(), "and it did not run"
    free()
    thread.join(60)
    assert out and ok(out[0])["changed"] is True and not out[0].duplicate
    wait_for(lambda: get(port, "/readyz")[0] == 200, 30, "ready again")
    metrics = get(port, "/metrics")[1]
    assert sample(metrics, "storage_worker_journal_writable") == 1
    assert sample(metrics, "storage_worker_ready") == 1
    wait_for(lambda: queue_depth(harness.settings.topology.command_queue) == 0, 15, "the queue to be empty")
    assert queue_depth(harness.settings.topology.dead_letter_queue) == 0, "nothing was dead-lettered"
