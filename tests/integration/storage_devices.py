"""Real block storage for integration tests: loop devices and iSCSI targets, and the libvirt pools a
test defines on them.

    loop_device(size, fs=None|"ext4"|"xfs", label=None|"gpt"|"msdos") -> LoopDevice
        A sparse backing file under the test's tmp dir, attached as a loop device with partition
        scanning (/dev/loopN, partitions /dev/loopNpM), then a filesystem (xfs with reflink=1; xfs
        needs at least 300 MiB) or a partition table. Afterwards: whatever is mounted from the device
        or its partitions is unmounted and the device detached.
    iscsi_target(luns=[size, ...]) -> IscsiTarget
        A target with a unique IQN and one file-backed LUN per size (LUN 1, 2, ...; tgt adds LUN 0,
        a controller), served by a tgtd that listens on 127.0.0.1 only, open to one initiator IQN.
        Afterwards the target is deleted. The tgtd is this session's own (its own control port and
        portal port, found free), started for the first test that asks for a target and stopped when
        the session ends (fixture tgt_daemon; import it too), unless
        TEST_TGT_CONTROL_PORT and TEST_ISCSI_PORTAL name a tgtd that runs already: that one is used
        and left running.
    libvirt_pools -> PoolTracker
        Unique pool names with a per-test prefix; afterwards every pool with that prefix is stopped
        (unmounted) and undefined, before the devices under it are released.

Where a device or the daemon cannot be had, the test is skipped, or fails when CI is set (`require`).
Use it from a test module by importing the fixtures:

    from tests.integration.storage_devices import (iscsi_target, libvirt_pools, loop_device,  # noqa: F401
                                                   tgt_daemon)

    def test_fs_pool(loop_device, libvirt_pools, tmp_path):
        dev = loop_device(64 * MiB, fs="ext4")
        pool = libvirt_pools.define(fs_pool_xml(libvirt_pools.name("fs"), dev.path, "ext4", tmp_path / "mnt"))
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import libvirt
import pytest
from lxml import etree

from tests.conftest import LIBVIRT_URI, require, unique

MiB = 2**20
GiB = 2**30
XFS_MIN_SIZE = 300 * MiB  # mkfs.xfs (xfsprogs 6.1): "Filesystem must be larger than 300MB."
IQN_PREFIX = "iqn.2024-01.test.storage-worker"
_TGTD_SOCKET_DIR = Path("/var/run/tgtd")


class CommandFailed(RuntimeError):
    pass


def run(*args: str | os.PathLike, timeout: float = 60) -> str:
    """Run a command; its stdout, or CommandFailed naming the command and its stderr."""
    completed = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, args))} exited {completed.returncode}: "
                            f"{(completed.stderr or completed.stdout).strip()}")
    return completed.stdout


def _have_root_tools(*tools: str) -> None:
    require(os.geteuid() == 0, "real block devices need root")
    missing = [t for t in tools if shutil.which(t) is None]
    require(not missing, f"missing tools for real block devices: {', '.join(missing)}")


def libvirt_error(error: libvirt.libvirtError) -> tuple[int, int, str]:
    """(code, domain, message) of a libvirtError."""
    return error.get_error_code(), error.get_error_domain(), error.get_error_message() or str(error)


@contextlib.contextmanager
def raises_libvirt(code: int, domain: int | None = None, *, contains: str | tuple[str, ...] = ()
                   ) -> Iterator[list[tuple[int, int, str]]]:
    """Expect a libvirtError with this code (and domain); `contains`: text(s) its message must hold.
    Yields a list that holds (code, domain, message) afterwards."""
    caught: list[tuple[int, int, str]] = []
    with pytest.raises(libvirt.libvirtError) as info:
        yield caught
    got = libvirt_error(info.value)
    caught.append(got)
    assert got[0] == code and (domain is None or got[1] == domain), f"expected code {code} domain {domain}, got {got}"
    for text in (contains,) if isinstance(contains, str) else contains:
        assert text in got[2], f"{text!r} not in {got[2]!r}"


# ---- loop devices -------------------------------------------------------------------------------

def _mounts() -> list[tuple[str, str]]:
    """(source, mount point) of every mount, in mount order."""
    found = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            source, point = line.split()[:2]
            found.append((source, point.replace("\\040", " ")))
    return found


@dataclass
class LoopDevice:
    path: str  # /dev/loopN
    backing: Path
    size: int
    fs: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def partition_name(self, number: int) -> str:
        """The kernel's (and libvirt's volume) name of partition `number`: loopN ends in a digit, so
        a 'p' separates the partition number (loop3p1)."""
        return f"{self.name}{'p' if self.name[-1].isdigit() else ''}{number}"

    def partition_path(self, number: int) -> str:
        return f"/dev/{self.partition_name(number)}"

    def attached(self) -> bool:
        """True while the device is still bound to this test's backing file (not detached and reused)."""
        try:
            bound = Path(f"/sys/block/{self.name}/loop/backing_file").read_text().strip()
        except OSError:
            return False
        return os.path.realpath(bound) == os.path.realpath(self.backing)

    def mount_points(self) -> list[str]:
        """Where the device or one of its partitions is mounted, in mount order."""
        return [point for source, point in _mounts() if source == self.path or source.startswith(f"{self.path}p")]

    def probe(self, what: str = "TYPE") -> str | None:
        """blkid's low-level probe (no cache): TYPE (filesystem) or PTTYPE (partition table)."""
        completed = subprocess.run(["blkid", "-p", "-o", "value", "-s", what, self.path], capture_output=True,
                                   text=True, timeout=30)
        return completed.stdout.strip() or None

    def partitions(self) -> list[tuple[int, int, int]]:
        """(number, start, size) in bytes of each partition, as parted reads the table."""
        try:
            out = run("parted", "-s", "-m", self.path, "unit", "B", "print")
        except CommandFailed as exc:
            if "unrecognised disk label" in str(exc):
                return []
            raise
        found = []
        for line in out.splitlines()[2:]:
            fields = line.rstrip(";").split(":")
            if fields and fields[0].isdigit():
                found.append((int(fields[0]), int(fields[1].rstrip("B")), int(fields[3].rstrip("B"))))
        return found

    def release(self) -> None:
        """Unmount whatever is mounted from the device, then detach it (only if it is still ours)."""
        if not self.attached():
            return
        for point in reversed(self.mount_points()):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["losetup", "-d", self.path], capture_output=True)


def attach_loop(backing: Path, size: int, fs: str | None = None, label: str | None = None) -> LoopDevice:
    """A loop device over a new sparse file; the caller releases it (LoopDevice.release)."""
    if fs not in (None, "ext4", "xfs"):
        raise ValueError(f"fs is None, 'ext4' or 'xfs', not {fs!r}")
    if label not in (None, "gpt", "msdos"):
        raise ValueError(f"label is None, 'gpt' or 'msdos', not {label!r}")
    if fs is not None and label is not None:
        raise ValueError("a loop device gets a filesystem or a partition table, not both")
    if fs == "xfs" and size < XFS_MIN_SIZE:
        raise ValueError(f"mkfs.xfs needs at least {XFS_MIN_SIZE} bytes, asked for {size}")
    backing.parent.mkdir(parents=True, exist_ok=True)
    with open(backing, "wb") as handle:
        handle.truncate(size)
    try:
        path = run("losetup", "-f", "--show", "-P", backing).strip()
    except CommandFailed as exc:
        backing.unlink()
        require(False, f"no loop device: {exc}")
        raise
    device = LoopDevice(path=path, backing=backing, size=size, fs=fs, label=label)
    try:
        if fs == "ext4":
            run("mkfs.ext4", "-q", "-F", path)
        elif fs == "xfs":
            run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", path)
        elif label is not None:
            run("parted", "-s", path, "mklabel", label)
    except BaseException:
        device.release()
        raise
    return device


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[..., LoopDevice]]:
    """Factory: loop_device(size, fs=None, label=None) -> LoopDevice; released after the test."""
    _have_root_tools("losetup", "parted", "blkid", "mkfs.ext4", "mkfs.xfs")
    made: list[LoopDevice] = []
    counter = itertools.count(1)

    def make(size: int, fs: str | None = None, label: str | None = None) -> LoopDevice:
        device = attach_loop(tmp_path / "loop" / f"disk{next(counter)}.img", size, fs=fs, label=label)
        made.append(device)
        return device

    yield make
    for device in reversed(made):
        device.release()
        with contextlib.suppress(FileNotFoundError):
            device.backing.unlink()


# ---- iSCSI targets (tgt) ------------------------------------------------------------------------

def _free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


@dataclass
class TgtDaemon:
    """A tgtd reached through its control port (tgtadm -C); `process` is set when this session started it."""

    control_port: int
    host: str
    port: int
    process: subprocess.Popen | None = None
    log: Path | None = None
    _tids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def adm(self, *args: str | os.PathLike) -> str:
        return run("tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args, timeout=30)

    def answers(self) -> bool:
        try:
            self.adm("--mode", "system", "--op", "show")
        except (CommandFailed, subprocess.TimeoutExpired):
            return False
        return True

    def new_target(self, iqn: str) -> int:
        """Create a target under the first free tid; its tid."""
        for _ in range(1000):
            tid = next(self._tids)
            try:
                self.adm("--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", iqn)
                return tid
            except CommandFailed as exc:
                if "exist" not in str(exc):
                    raise
        raise RuntimeError("no free target id in tgtd")

    def delete_target(self, tid: int) -> None:
        with contextlib.suppress(CommandFailed, subprocess.TimeoutExpired):
            self.adm("--mode", "target", "--op", "delete", "--force", "--tid", str(tid))

    def stop(self) -> None:
        """Stop a tgtd this session started (SIGTERM does not stop tgtd: it is told to exit)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(CommandFailed, subprocess.TimeoutExpired):
                run("tgtadm", "-C", str(self.control_port), "--mode", "system", "--op", "delete", timeout=10)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for leftover in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (_TGTD_SOCKET_DIR / leftover).unlink()


def start_tgtd(log_dir: Path, host: str = "127.0.0.1", attempts: int = 5) -> TgtDaemon:
    """A tgtd of our own: listening on host only, on a free port, with a control port no other tgtd uses."""
    log_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(attempts):
        control = random.randint(20000, 29999)
        if (_TGTD_SOCKET_DIR / f"socket.{control}").exists():
            continue
        port = _free_tcp_port(host)
        log = log_dir / f"tgtd-{control}.log"
        with open(log, "ab") as output:
            process = subprocess.Popen(["tgtd", "-f", "-C", str(control), "--iscsi", f"portal={host}:{port}"],
                                       stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        daemon = TgtDaemon(control_port=control, host=host, port=port, process=process, log=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if daemon.answers() and _listening(host, port):
                return daemon
            time.sleep(0.05)
        last = log.read_text(errors="replace")[-500:]
        daemon.stop()
    raise RuntimeError(f"tgtd did not start in {attempts} attempts; last log: {last}")


@pytest.fixture(scope="session")
def tgt_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TgtDaemon]:
    """The session's tgtd: TEST_TGT_CONTROL_PORT + TEST_ISCSI_PORTAL (host:port) name a running one to
    use (and leave running); otherwise one is started on 127.0.0.1 and stopped at the end."""
    _have_root_tools("tgtd", "tgtadm")
    control, portal = os.environ.get("TEST_TGT_CONTROL_PORT"), os.environ.get("TEST_ISCSI_PORTAL")
    if control and portal:
        host, _, port = portal.rpartition(":")
        daemon = TgtDaemon(control_port=int(control), host=host, port=int(port))
        require(daemon.answers() and _listening(daemon.host, daemon.port),
                f"tgtd at control port {control} / portal {portal} does not answer")
        yield daemon
        return
    try:
        daemon = start_tgtd(tmp_path_factory.mktemp("tgtd"))
    except (RuntimeError, OSError) as exc:
        require(False, f"cannot start tgtd: {exc}")
        raise
    try:
        yield daemon
    finally:
        daemon.stop()


@dataclass
class IscsiTarget:
    host: str
    port: int
    iqn: str
    initiator_iqn: str
    lun_sizes: list[int]
    tid: int
    backing: list[Path]

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def volume_name(lun: int) -> str:
        """libvirt's iscsi-direct volume name of a LUN (LUN 0 is tgt's controller)."""
        return f"unit:0:0:{lun}"

    def volume_path(self, lun: int) -> str:
        """libvirt's iscsi-direct volume key and path of a LUN."""
        return f"ip-{self.host}:{self.port}-iscsi-{self.iqn}-lun-{lun}"

    def pool_xml(self, name: str, initiator_iqn: str | None = None) -> str:
        return iscsi_direct_pool_xml(name, self.host, self.port, self.iqn, initiator_iqn or self.initiator_iqn)


@pytest.fixture
def iscsi_target(tgt_daemon: TgtDaemon, tmp_path: Path) -> Iterator[Callable[..., IscsiTarget]]:
    """Factory: iscsi_target(luns=[size, ...]) -> IscsiTarget; the target is deleted after the test."""
    made: list[tuple[TgtDaemon, IscsiTarget]] = []

    def make(luns: list[int] | tuple[int, ...] = (64 * MiB,)) -> IscsiTarget:
        daemon = tgt_daemon
        tag = unique("t")
        iqn, initiator = f"{IQN_PREFIX}:{tag}", f"{IQN_PREFIX}:{tag}-initiator"
        tid = daemon.new_target(iqn)
        target = IscsiTarget(host=daemon.host, port=daemon.port, iqn=iqn, initiator_iqn=initiator,
                             lun_sizes=list(luns), tid=tid, backing=[])
        made.append((daemon, target))
        for lun, size in enumerate(luns, start=1):
            backing = tmp_path / "iscsi" / f"{tag}-lun{lun}.img"
            backing.parent.mkdir(parents=True, exist_ok=True)
            with open(backing, "wb") as handle:
                handle.truncate(size)
            target.backing.append(backing)
            daemon.adm("--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", str(lun),
                       "--backing-store", backing)
        # Only this initiator may log in (the portal listens on 127.0.0.1 only anyway).
        daemon.adm("--mode", "target", "--op", "bind", "--tid", str(tid), "--initiator-name", initiator)
        return target

    yield make
    for daemon, target in reversed(made):
        daemon.delete_target(target.tid)


# ---- libvirt pools ------------------------------------------------------------------------------

def fs_pool_xml(name: str, device: str, fmt: str | None, target: str | os.PathLike) -> str:
    source_format = f"<format type={quoteattr(fmt)}/>" if fmt else ""
    return (f"<pool type='fs'><name>{name}</name><source><device path={quoteattr(device)}/>{source_format}</source>"
            f"<target><path>{os.fspath(target)}</path></target></pool>")


def disk_pool_xml(name: str, device: str, fmt: str | None = "gpt", target: str = "/dev") -> str:
    source_format = f"<format type={quoteattr(fmt)}/>" if fmt else ""
    return (f"<pool type='disk'><name>{name}</name><source><device path={quoteattr(device)}/>{source_format}"
            f"</source><target><path>{target}</path></target></pool>")


def iscsi_direct_pool_xml(name: str, host: str, port: int | None, target_iqn: str, initiator_iqn: str) -> str:
    port_attribute = f" port='{port}'" if port else ""
    return (f"<pool type='iscsi-direct'><name>{name}</name><source><host name={quoteattr(host)}{port_attribute}/>"
            f"<device path={quoteattr(target_iqn)}/><initiator><iqn name={quoteattr(initiator_iqn)}/></initiator>"
            f"</source></pool>")


def volume_xml(name: str, capacity: int, *, allocation: int | None = None, fmt: str | None = None) -> str:
    """Volume XML as `virsh vol-create-as` writes it: no <allocation> unless given (libvirt then
    allocates the whole capacity), a <target> only with a format."""
    parts = [f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"]
    if allocation is not None:
        parts.append(f"<allocation unit='bytes'>{allocation}</allocation>")
    if fmt is not None:
        parts.append(f"<target><format type={quoteattr(fmt)}/></target>")
    parts.append("</volume>")
    return "".join(parts)


class PoolTracker:
    """Pools a test defines, named with its own prefix, and removed (stopped, undefined) afterwards."""

    def __init__(self, conn: libvirt.virConnect, prefix: str):
        self.conn = conn
        self.prefix = prefix
        self._counter = itertools.count(1)

    def name(self, what: str = "pool") -> str:
        return f"{self.prefix}{what}{next(self._counter)}"

    def define(self, xml: str, flags: int = 0) -> libvirt.virStoragePool:
        return self.conn.storagePoolDefineXML(xml, flags)

    def remove_all(self) -> None:
        """Stop and undefine every pool with the prefix. A fresh connection (a test may have lost its
        own), waited for while libvirtd restarts (other developers' tools restart the shared daemon)."""
        conn = _open_patiently()
        try:
            for pool in conn.listAllStoragePools(0):
                if pool.name().startswith(self.prefix):
                    _remove_pool(pool)
        finally:
            conn.close()


def _open_patiently(timeout: float = 60.0) -> libvirt.virConnect:
    end = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(LIBVIRT_URI)
        except libvirt.libvirtError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def _remove_pool(pool: libvirt.virStoragePool) -> None:
    """Stop (an fs pool whose mount stays busy is unmounted lazily first), then undefine."""
    for attempt in range(20):
        try:
            if pool.isActive():
                pool.destroy()
            break
        except libvirt.libvirtError as exc:
            if attempt == 9:  # still busy after a second: detach the mount, libvirt then just stops
                target = _target_path(pool)
                if target is not None:
                    subprocess.run(["umount", "-l", target], capture_output=True)
            elif attempt == 19:
                warnings.warn(f"could not stop pool {pool.name()}: {exc}")
            time.sleep(0.1)
    try:
        pool.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            warnings.warn(f"could not undefine pool {pool.name()}: {exc}")


def _target_path(pool: libvirt.virStoragePool) -> str | None:
    try:
        root = etree.fromstring(pool.XMLDesc(0))
    except libvirt.libvirtError:
        return None
    if root.get("type") not in ("fs", "netfs"):
        return None
    return root.findtext("target/path")


@pytest.fixture
def libvirt_pools(libvirt_conn, loop_device) -> Iterator[PoolTracker]:
    """Pool names with a per-test prefix; the pools are removed (fs pools unmounted) before the loop
    devices under them are released: this fixture depends on loop_device, so its teardown runs first.
    (An iscsi-direct pool holds no session open: stopping it after its target is gone is fine.)"""
    tracker = PoolTracker(libvirt_conn, f"{unique('blk')}-")
    yield tracker
    tracker.remove_all()


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.05) -> object:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


__all__ = [
    "GiB", "MiB", "XFS_MIN_SIZE", "CommandFailed", "IscsiTarget", "LoopDevice", "PoolTracker", "TgtDaemon",
    "attach_loop", "disk_pool_xml", "fs_pool_xml", "iscsi_direct_pool_xml", "iscsi_target", "libvirt_error",
    "libvirt_pools", "loop_device", "raises_libvirt", "run", "start_tgtd", "tgt_daemon", "volume_xml",
    "wait_until",
]
