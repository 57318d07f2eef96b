"""What the soak runs against: the soak's own three-node RabbitMQ cluster, a file root per host under
/var/lib/libvirt/images, a STATE_DIR on a small tmpfs (so it can be filled), a dir pool on a small
loop-mounted ext4 (so it can be filled), a defined (never started) domain to attach volumes to,
and the worker processes: two hosts, the first with a hot standby sharing its STATE_DIR.

Everything made here is removed by `close()`: worker processes, pools, the domain, mounts, loop
devices, files, the soak's broker objects, and the cluster when this rig started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pika

from tests.integration.conftest import remove_pools
from tests.integration.processes import WorkerProcess
from tests.integration.storage_devices import LoopDevice, attach_loop

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "scripts" / "dev-cluster"
# The soak's cluster: its own state dir, namespaces and subnet, never the default cluster of the tests.
CLUSTER_ENV = {"STORAGE_WORKER_CLUSTER_DIR": "/tmp/storage-worker-soak-cluster",
               "STORAGE_WORKER_CLUSTER_NETNS": "sws", "STORAGE_WORKER_CLUSTER_NET": "10.232.0"}
IMAGES = Path("/var/lib/libvirt/images")
LIBVIRT_URI = "qemu:///system"
MiB = 1024 * 1024
STATE_FS_SIZE = 128 * MiB
FULL_POOL_SIZE = 64 * MiB


class RigError(RuntimeError):
    """Something the soak needs could not be set up; the message says what."""


def cluster(*args: str, timeout: float = 240) -> str:
    """scripts/dev-cluster against the soak's cluster; its stdout."""
    done = subprocess.run([str(CLUSTER_SCRIPT), *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **CLUSTER_ENV}, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RigError(f"dev-cluster {' '.join(args)} exited {done.returncode}:\n{tail}")
    return done.stdout


@dataclass
class Host:
    """One host id: its workers (the first is started first; more share its STATE_DIR as standbys),
    its file root, its pools."""

    host_id: str
    root: Path
    state_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    main_pool: str = ""
    full_pool: str = ""          # on the loop-mounted ext4 (only the first host has one)
    domain: str = ""             # for attach/detach (only the first host has one)

    @property
    def transfer_dir(self) -> Path:
        return self.root / "transfer"


@dataclass
class Rig:
    tag: str
    base: Path
    urls: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    started_cluster: bool = False
    state_mount: Path | None = None
    pool_device: LoopDevice | None = None
    pool_mount: Path | None = None

    @property
    def prefix(self) -> str:
        return f"soak-{self.tag}"

    @property
    def amqp_url(self) -> str:
        return ";".join(self.urls)

    # ------------------------------------------------------------------------------ bring up

    @classmethod
    def create(cls) -> Rig:
        tag = uuid.uuid4().hex[:6]
        if not IMAGES.is_dir():
            raise RigError(f"{IMAGES} is missing: libvirt-daemon-system creates it (scripts/lib/bootstrap.sh)")
        base = IMAGES / f"storage-worker-soak-{tag}"
        base.mkdir(mode=0o755)
        rig = cls(tag=tag, base=base)
        try:
            rig._start_cluster()
            rig._make_hosts()
        except BaseException:
            rig.close()
            raise
        return rig

    def _start_cluster(self) -> None:
        self.started_cluster = not cluster("pids").strip()
        cluster("start")
        self.urls = cluster("urls").split()

    def _make_hosts(self) -> None:
        for letter in "ab":
            host_id = f"{self.prefix}-{letter}"
            root = self.base / letter
            (root / "transfer").mkdir(parents=True)
            self.hosts.append(Host(host_id=host_id, root=root, state_dir=self.base / f"state-{letter}"))
        first = self.hosts[0]
        # STATE_DIR of the host with the standby on a small tmpfs: the soak fills it.
        first.state_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_FS_SIZE}", "tmpfs", str(first.state_dir)],
                       check=True, capture_output=True)
        self.state_mount = first.state_dir
        self.hosts[1].state_dir.mkdir()
        # A dir pool on a small ext4 of its own: the soak fills it (ballast in lost+found, which no
        # listing shows as a volume).
        self.pool_device = attach_loop(self.base / "full-pool.img", FULL_POOL_SIZE, fs="ext4")
        self.pool_mount = first.root / "full"
        self.pool_mount.mkdir()
        subprocess.run(["mount", self.pool_device.path, str(self.pool_mount)], check=True, capture_output=True)
        for index, host in enumerate(self.hosts):
            for number in range(2 if index == 0 else 1):
                host.workers.append(self._worker(host, number))
        first.domain = f"{self.prefix}-dom"
        self._define_domain(first.domain)

    def _worker(self, host: Host, number: int) -> WorkerProcess:
        return WorkerProcess(host_id=host.host_id, prefix=self.prefix, state_dir=host.state_dir,
                             allowed_root=host.root, log_path=self.base / f"{host.host_id}-w{number}.log",
                             amqp_url=self.amqp_url, reconcile_interval=5, shutdown_grace=15,
                             libvirt_wait=60, concurrency=4, log_format="json",
                             journal_max_rows=20_000)

    def _define_domain(self, name: str) -> None:
        xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"""
        conn = libvirt.open(LIBVIRT_URI)
        try:
            conn.defineXML(xml)
        finally:
            conn.close()

    def start_workers(self) -> None:
        for host in self.hosts:
            for worker in host.workers:
                worker.start()
                worker.wait_online(timeout=90)

    def workers(self) -> list[WorkerProcess]:
        return [worker for host in self.hosts for worker in host.workers]

    # -------------------------------------------------------------------------------- tear down

    def stop_workers(self) -> None:
        for worker in self.workers():
            worker.stop()

    def close(self) -> None:
        """Remove everything the rig made; each step runs even when an earlier one failed."""
        steps = [self.stop_workers, self._remove_domain, lambda: remove_pools(self.prefix), self._unmount,
                 self._delete_broker_objects, self._stop_cluster, lambda: shutil.rmtree(self.base, True)]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every step gets its turn; the first failure is raised
                errors.append(exc)
        if errors:
            raise errors[0]

    def _remove_domain(self) -> None:
        if not self.hosts or not self.hosts[0].domain:
            return
        conn = libvirt.open(LIBVIRT_URI)
        try:
            try:
                conn.lookupByName(self.hosts[0].domain).undefine()
            except libvirt.libvirtError:
                pass
        finally:
            conn.close()

    def _unmount(self) -> None:
        if self.pool_device is not None:
            self.pool_device.release()
        if self.state_mount is not None:
            subprocess.run(["umount", str(self.state_mount)], check=False, capture_output=True)

    def _delete_broker_objects(self) -> None:
        if not self.urls or self.started_cluster:
            return  # a cluster this rig started goes away whole
        connection = pika.BlockingConnection([pika.URLParameters(url) for url in self.urls])
        try:
            channel = connection.channel()
            queues = [f"{self.prefix}.commands.{host.host_id}" for host in self.hosts]
            queues += [f"{self.prefix}.{name}" for name in ("dead", "events.stream", "soak-results", "soak-replies",
                                                                     "soak-events")]
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in ("commands", "results", "events", "dlx"):
                channel.exchange_delete(f"{self.prefix}.{exchange}")
        finally:
            connection.close()

    def _stop_cluster(self) -> None:
        if self.started_cluster:
            cluster("stop")
