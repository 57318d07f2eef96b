"""A lost libvirt connection is re-opened and the command retried; the attempt count shows it."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.integration.conftest import ok, wait_for

pytestmark = pytest.mark.integration


def libvirtd_answers() -> bool:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "uri"], capture_output=True).returncode == 0


def stop_libvirtd() -> None:
    subprocess.run(["pkill", "-TERM", "-x", "libvirtd"], check=False)
    wait_for(lambda: subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0, 30,
             "libvirtd to exit")


def start_libvirtd() -> None:
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(libvirtd_answers, 30, "libvirtd to answer")


@pytest.fixture
def restartable_libvirtd():
    yield
    if not libvirtd_answers():
        start_libvirtd()


def test_command_waits_for_libvirtd_to_come_back_and_reports_its_attempts(make_worker, restartable_libvirtd):
    harness = make_worker(retry_attempts=12, retry_max_seconds=60)
    client = harness.client()
    pool = harness.name("pool")
    ok(client.call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(harness.root / pool)},
                                   "build": True, "start": True}))
    stop_libvirtd()
    restarter = threading.Thread(target=lambda: (time.sleep(2), start_libvirtd()))
    restarter.start()
    result = client.call("volume.create", {"pool": pool, "name": "after.raw", "capacity": 2**20}, timeout=120)
    restarter.join()
    ok(result)
    assert result.attempts > 1, "the first tries met the daemon down"
    assert result.result["changed"] is True
    assert ok(client.call("volume.info", {"pool": pool, "name": "after.raw"}))["capacity"] == 2**20
