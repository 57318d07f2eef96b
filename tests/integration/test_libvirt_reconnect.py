"""A lost libvirt connection is re-opened in the background; commands that arrive meanwhile wait for
it (within LIBVIRT_WAIT and their deadline) instead of failing at once."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from tests.integration.conftest import call_async, ok, wait_for

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


def libvirt_clients(pid: int) -> list[int]:
    """libvirtd's ids of the clients process `pid` has connected, oldest first (virt-admin)."""
    listing = subprocess.run(["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True,
                             check=True).stdout
    ids = [int(line.split()[0]) for line in listing.splitlines()[2:] if line.strip()]
    mine = []
    for client in ids:
        info = subprocess.run(["virt-admin", "client-info", "libvirtd", str(client)], capture_output=True,
                              text=True).stdout
        if f"unix_process_id: {pid}" in info:
            mine.append(client)
    return sorted(mine)


def disconnect_client(client: int) -> None:
    subprocess.run(["virt-admin", "client-disconnect", "libvirtd", str(client)], capture_output=True, check=True)


@pytest.fixture
def restartable_libvirtd():
    yield
    if not libvirtd_answers():
        start_libvirtd()


@pytest.fixture
def freeze_libvirtd():
    """Stops libvirtd with SIGSTOP: alive, its sockets open, answering nothing — a daemon hung on
    storage, say. It always continues at the end of the test."""
    frozen: list[int] = []

    def freeze() -> None:
        pid = int(subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=True)
                  .stdout.split()[0])
        os.kill(pid, signal.SIGSTOP)
        frozen.append(pid)

    yield freeze
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    wait_for(libvirtd_answers, 30, "libvirtd to answer again")


def test_command_waits_for_libvirtd_to_come_back(make_worker, restartable_libvirtd):
    harness = make_worker()
    client = harness.client()
    pool = harness.running_pool(client)
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


def test_a_hung_libvirtd_fails_commands_as_unavailable_and_does_not_hold_up_a_stop(make_worker, freeze_libvirtd):
    """Keepalive notices the silence (about 20 s); the command then waits LIBVIRT_WAIT for a new
    connection and fails `unavailable` instead of waiting for the daemon; a stop is not held up by
    the re-open that libvirtd never answers.

    Every executor and the monitor hold a connection of their own before libvirtd stops, so no
    spare is left: each connection's keepalive notices the silence on its own schedule, and an
    executor whose connection is found dead before the main one needs a new connection while the
    main one still looks alive. libvirt's open never returns against a stopped daemon: that thread
    must be told `unavailable`, not left waiting for the open (which left commands without a
    result)."""
    harness = make_worker(concurrency=4, libvirt_wait=2, retry_max_seconds=5)
    client = harness.client()
    pool = harness.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "v.raw", "capacity": 2**20}))
    gateway = harness.worker.gateway

    def every_thread_holds_a_connection() -> bool:
        warm = [call_async(harness.client, "volume.info", {"pool": pool, "name": "v.raw"}) for _ in range(8)]
        for thread, out in warm:
            thread.join(60)
            ok(out[0])
        return not gateway._spares

    wait_for(every_thread_holds_a_connection, 60, "every executor to hold a connection of its own", interval=0)
    freeze_libvirtd()
    began = time.monotonic()
    calls = [call_async(harness.client, "volume.info", {"pool": pool, "name": "v.raw"}) for _ in range(4)]
    results = []
    for thread, out in calls:
        thread.join(120)
        assert out, "no result within 120 s"
        results.append(out[0])
    waited = time.monotonic() - began
    assert {(r.status.value, r.error.code.value) for r in results} == {("failed", "unavailable")}, results
    assert waited < 60, f"answered after {waited:.0f} s"
    assert not gateway.connected
    began = time.monotonic()
    harness.worker.stop(grace=10)
    assert time.monotonic() - began < 30, "the stop waited for libvirtd"


def test_a_thread_whose_connection_is_lost_while_libvirtd_hangs_is_told_unavailable(make_worker, freeze_libvirtd):
    """The executors' connections are dropped by libvirtd (virt-admin client-disconnect) while the
    main one stays open, then libvirtd stops answering: each executor needs a new connection while
    the main one still looks alive, and libvirt's open never returns against the stopped daemon. The
    command must end `unavailable` within the retry budget, not wait for that open forever. (This is
    the order in which keepalive sometimes finds the connections dead; here it is made certain.)"""
    before = max(libvirt_clients(os.getpid()), default=0)
    harness = make_worker(concurrency=2, libvirt_wait=2, retry_max_seconds=5)
    client = harness.client()
    pool = harness.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "v.raw", "capacity": 2**20}))
    gateway = harness.worker.gateway

    def no_spare_left() -> bool:
        warm = [call_async(harness.client, "volume.info", {"pool": pool, "name": "v.raw"}) for _ in range(4)]
        for thread, out in warm:
            thread.join(60)
            ok(out[0])
        return not gateway._spares

    wait_for(no_spare_left, 60, "every executor to hold a connection of its own", interval=0)
    main, *others = [c for c in libvirt_clients(os.getpid()) if c > before]
    assert len(others) == 3, "one connection for each of the two executors and the monitor"
    for other in others:
        disconnect_client(other)
    freeze_libvirtd()
    began = time.monotonic()
    calls = [call_async(harness.client, "volume.info", {"pool": pool, "name": "v.raw"}) for _ in range(2)]
    results = []
    for thread, out in calls:
        thread.join(120)
        assert out, "no result within 120 s"
        results.append(out[0])
    assert {(r.status.value, r.error.code.value) for r in results} == {("failed", "unavailable")}, results
    assert time.monotonic() - began < 60
