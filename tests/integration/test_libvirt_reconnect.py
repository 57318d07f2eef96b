"""A lost libvirt connection is re-opened in the background; commands that arrive meanwhile wait for
it (within LIBVIRT_WAIT and their deadline) instead of failing at once."""

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


def test_command_waits_for_libvirtd_to_come_back(make_worker, restartable_libvirtd):
    harness = make_worker()
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
    assert (result.finished_at - result.started_at).total_seconds() > 1, "it waited for the daemon"
    assert result.result["changed"] is True
    assert ok(client.call("volume.info", {"pool": pool, "name": "after.raw"}))["capacity"] == 2**20


def test_command_gives_up_at_its_deadline_while_libvirtd_is_down(make_worker, restartable_libvirtd):
    from datetime import datetime, timedelta, timezone

    harness = make_worker()
    client = harness.client()
    ok(client.call("host.info", {}))
    stop_libvirtd()
    try:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=2)
        result = client.call("host.info", {}, deadline=deadline, timeout=60)
    finally:
        start_libvirtd()
    assert result.status.value == "failed" and result.error.code.value == "unavailable"
    assert (result.finished_at - result.started_at).total_seconds() < 10
