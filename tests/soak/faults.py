"""Faults at seeded moments: the schedule (which fault, when, against which target) comes from the
seed alone; a thread injects them one after another and undoes each (a killed worker is started
again, libvirtd continues, a node rejoins, ballast is removed) before the next.

libvirtd is the machine's own, shared: every fault that stops it restores it in a `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import wait_for
from tests.soak.rig import Rig, RigError, cluster

KINDS = ("worker.sigkill", "worker.sigterm", "libvirtd.restart", "libvirtd.sigstop", "broker.close_connection",
         "broker.node_restart", "state_dir.full", "pool.full")
SECONDS_PER_FAULT = 20


@dataclass(frozen=True)
class Planned:
    at: float        # seconds after the start
    kind: str
    target: int      # which worker / node / connection, reduced modulo what there is
    hold: float      # seconds a fault that lasts lasts (sigstop, full disks)


def schedule(seed: int, seconds: float) -> list[Planned]:
    """Every kind at least once, then about one fault per SECONDS_PER_FAULT, between 8 % and 80 % of
    the run (the rest is for the mix to go on after the last fault and the drain)."""
    rng = random.Random(f"faults-{seed}")
    count = max(len(KINDS), int(seconds / SECONDS_PER_FAULT))
    kinds: list[str] = []
    while len(kinds) < count:
        batch = list(KINDS)
        rng.shuffle(batch)
        kinds += batch
    times = sorted(rng.uniform(0.08 * seconds, 0.8 * seconds) for _ in range(count))
    return [Planned(at=round(t, 1), kind=k, target=rng.randrange(1000), hold=round(rng.uniform(2.0, 5.0), 1))
            for t, k in zip(times, kinds[:count])]


def libvirtd_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "libvirtd"], check=False, capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def signal_libvirtd(signum: int) -> int:
    """Send `signum` to libvirtd; its pid. libvirtd is shared: another user may restart it between
    the look-up and the signal, so a pid that vanished is looked up again."""
    for _ in range(20):
        pid = libvirtd_pid()
        if pid is not None:
            try:
                os.kill(pid, signum)
                return pid
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise AssertionError("libvirtd is not running")


def libvirtd_answers() -> bool:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "uri"], check=False, capture_output=True,
                          timeout=30).returncode == 0


def ensure_libvirtd() -> None:
    """libvirtd running and answering (started again if a fault left it stopped)."""
    pid = libvirtd_pid()
    if pid is None:
        subprocess.run(["libvirtd", "-d"], check=True)
    else:
        with contextlib.suppress(ProcessLookupError):  # restarted by someone else meanwhile
            os.kill(pid, signal.SIGCONT)
    wait_for(libvirtd_answers, 60, "libvirtd to answer", interval=0.3)


def fill(directory: Path) -> Path:
    """A ballast file that takes every free byte of the file system holding `directory`."""
    ballast = directory / "soak-ballast"
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1024 * 1024, 4096, 512):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(descriptor, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    except BaseException:
        ballast.unlink()
        raise
    finally:
        os.close(descriptor)
    return ballast


@dataclass
class Injected:
    kind: str
    target: str
    started: float
    ended: float
    error: str | None = None


@dataclass
class Faults:
    rig: Rig
    plan: list[Planned]
    injected: list[Injected] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=300)

    def counts(self) -> Counter:
        return Counter(f.kind for f in self.injected if f.error is None)

    def errors(self) -> list[Injected]:
        return [f for f in self.injected if f.error is not None]

    def _run(self) -> None:
        for planned in self.plan:
            delay = self._began + planned.at - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                return
            started = time.monotonic()
            target, error = "", None
            try:
                target = getattr(self, "_" + planned.kind.replace(".", "_"))(planned)
            except Exception as exc:  # noqa: BLE001 - reported in the table as a fault that went wrong
                error = f"{type(exc).__name__}: {exc}"
            self.injected.append(Injected(planned.kind, target, started - self._began,
                                          time.monotonic() - self._began, error))

    # ------------------------------------------------------------------------------- workers

    def _pick_worker(self, planned: Planned):
        workers = self.rig.workers()
        return workers[planned.target % len(workers)]

    def _worker_sigkill(self, planned: Planned) -> str:
        worker = self._pick_worker(planned)
        worker.kill()
        time.sleep(planned.hold / 2)
        worker.start()
        worker.wait_online(timeout=120)
        return f"{worker.host_id} pid"

    def _worker_sigterm(self, planned: Planned) -> str:
        worker = self._pick_worker(planned)
        worker.signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise AssertionError(f"worker {worker.host_id} did not exit within 60 s of SIGTERM") from None
        finally:
            if not worker.running():
                worker.start()
                worker.wait_online(timeout=120)
        return worker.host_id

    # ------------------------------------------------------------------------------- libvirtd

    def _libvirtd_restart(self, planned: Planned) -> str:
        try:
            signal_libvirtd(signal.SIGTERM)
            wait_for(lambda: libvirtd_pid() is None, 60, "libvirtd to exit", interval=0.1)
            time.sleep(planned.hold / 2)
        finally:
            ensure_libvirtd()
        return "libvirtd"

    def _libvirtd_sigstop(self, planned: Planned) -> str:
        pid = signal_libvirtd(signal.SIGSTOP)
        try:
            time.sleep(planned.hold)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            wait_for(libvirtd_answers, 60, "libvirtd to answer after SIGCONT", interval=0.2)
        return f"libvirtd {planned.hold} s"

    # --------------------------------------------------------------------------------- broker

    def _broker_close_connection(self, planned: Planned) -> str:
        """Close one of the workers' connections, on whichever node holds it."""
        names = [f"storage-worker {host.host_id}" for host in self.rig.hosts]
        found: list[tuple[int, str, str]] = []
        for node in (1, 2, 3):
            try:
                listing = cluster("ctl", str(node), "-q", "list_connections", "pid", "client_properties", timeout=60)
            except RigError:  # a node that is down holds no connection
                listing = ""
            for line in listing.splitlines():
                for name in names:
                    if f'"{name}"' in line:
                        found.append((node, line.split("\t", 1)[0], name))
        if not found:
            raise AssertionError("no worker connection found on any node")
        node, pid, name = found[planned.target % len(found)]
        cluster("ctl", str(node), "close_connection", pid, "soak fault", timeout=60)
        return name

    def _broker_node_restart(self, planned: Planned) -> str:
        node = planned.target % 3 + 1
        try:
            cluster("kill", str(node), timeout=60)
            time.sleep(planned.hold / 2)
        finally:
            cluster("restart", str(node), timeout=180)
        return f"node {node}"

    # ---------------------------------------------------------------------------------- disks

    def _state_dir_full(self, planned: Planned) -> str:
        host = self.rig.hosts[0]
        ballast = fill(host.state_dir)
        try:
            time.sleep(planned.hold)
        finally:
            ballast.unlink()
        return host.host_id

    def _pool_full(self, planned: Planned) -> str:
        assert self.rig.pool_mount is not None
        ballast = fill(self.rig.pool_mount / "lost+found")
        try:
            time.sleep(planned.hold)
        finally:
            ballast.unlink()
        return self.rig.hosts[0].full_pool
