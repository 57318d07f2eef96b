"""The clones area: a 1 GiB volume cloned through the worker — by reflink and by the worker's own
streamed copy — against libvirt's own clone of the same volume (virStorageVolCreateXMLFrom, called
directly), on a loop-mounted xfs with reflink=1 and on a loop-mounted ext4.

The loop devices' backing files are sparse files under the benchmark's root; both file systems are
libvirt fs pools the worker may use. Every timed clone starts with the page cache dropped, each
side best of two in ABBA order, and each clone is deleted before the next.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import libvirt

from benchmarks.common import GiB, LIBVIRT_URI, MiB, Requester, Row, Table, WorkerProcess, best_of, call_timed, settle

SOURCE = "src.raw"
DEVICE_SIZE = 4 * GiB


class LoopPool:
    """A file system on a loop device over a sparse file, as a started libvirt fs pool."""

    def __init__(self, name: str, root: Path, fs: str):
        self.name = name
        self.backing = root / f"{name}.img"
        with open(self.backing, "wb") as handle:
            handle.truncate(DEVICE_SIZE)
        self.device = subprocess.run(["losetup", "-f", "--show", str(self.backing)], check=True, capture_output=True,
                                     text=True).stdout.strip()
        self.conn = None
        try:
            mkfs = ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"] if fs == "xfs" else ["mkfs.ext4", "-q", "-F"]
            subprocess.run([*mkfs, self.device], check=True, capture_output=True)
            self.path = root / name
            self.path.mkdir()
            self.conn = libvirt.open(LIBVIRT_URI)
            self.handle = self.conn.storagePoolCreateXML(
                f"<pool type='fs'><name>{name}</name><source><device path='{self.device}'/><format type='{fs}'/>"
                f"</source><target><path>{self.path}</path></target></pool>", 0)
        except BaseException:
            self.remove()
            raise

    def source(self, size: int) -> libvirt.virStorageVol:
        """A raw volume of `size` bytes of data (not sparse: every byte is copied)."""
        volume = self.handle.createXML(f"<volume><name>{SOURCE}</name><capacity>{size}</capacity>"
                                       f"<allocation>0</allocation></volume>", 0)
        block = os.urandom(8 * MiB)
        with open(volume.path(), "r+b") as handle:
            for _ in range(size // len(block)):
                handle.write(block)
        return volume

    def drop(self, name: str) -> None:
        if name in self.handle.listVolumes():
            self.handle.storageVolLookupByName(name).delete(0)

    def remove(self) -> None:
        if self.conn is not None:
            try:
                for volume in self.handle.listAllVolumes(0):
                    volume.delete(0)
                self.handle.destroy()
            except (libvirt.libvirtError, AttributeError):
                pass
            self.conn.close()
        subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)
        self.backing.unlink(missing_ok=True)


def bench_clones(table: Table, worker: WorkerProcess, root: Path, tag: str) -> None:
    pools: list[LoopPool] = []
    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    try:
        xfs = LoopPool(f"bench-{tag}-xfs", root, "xfs")
        pools.append(xfs)
        ext4 = LoopPool(f"bench-{tag}-ext4", root, "ext4")
        pools.append(ext4)
        figures = {}
        for pool in (xfs, ext4):
            source = pool.source(GiB)
            figures[pool] = _measure(client, worker, pool, source)
        client.expect_succeeded("volume.clone")
    finally:
        client.close()
        for pool in pools:
            pool.remove()
    x, e = figures[xfs], figures[ext4]
    table.add(Row("clones", "1 GiB clone on xfs, reflink: true (vs libvirt's reflink clone)", f"{x['reflink']:.3f} s",
                  f"{x['libvirt_reflink']:.3f} s", x["reflink"] / x["libvirt_reflink"], "", None,
                  "worker time includes the AMQP round trip"))
    table.add(Row("clones", "1 GiB clone on xfs, reflink: false: worker's copy vs libvirt createXMLFrom",
                  f"{x['copy']:.2f} s", f"{x['libvirt']:.2f} s", x["libvirt"] / x["copy"], ">= 0.5x",
                  x["libvirt"] / x["copy"] >= 0.5, "speed ratio; the copy is cancellable, libvirt's is not"))
    table.add(Row("clones", "reflink vs copy on xfs (speed-up)", f"{x['reflink']:.3f} s", f"{x['copy']:.2f} s",
                  x["copy"] / x["reflink"], ">= 20x", x["copy"] / x["reflink"] >= 20))
    table.add(Row("clones", "1 GiB clone on ext4, reflink: auto (a copy) vs libvirt createXMLFrom",
                  f"{e['copy']:.2f} s", f"{e['libvirt']:.2f} s", e["libvirt"] / e["copy"], ">= 0.5x",
                  e["libvirt"] / e["copy"] >= 0.5))
    table.add(Row("clones", "worker peak RSS during a 1 GiB streamed clone", f"{x['peak'] / MiB:.0f} MiB", "", None,
                  "< 150 MiB", x["peak"] < 150 * MiB))


def _measure(client: Requester, worker: WorkerProcess, pool: LoopPool, source: libvirt.virStorageVol) -> dict:
    def clone(name: str, reflink: bool | str) -> float:
        pool.drop(name)
        return call_timed(client, "volume.clone", {"pool": pool.name, "source": SOURCE, "name": name,
                                                   "reflink": reflink})

    def libvirt_clone(name: str, flags: int) -> float:
        pool.drop(name)
        began = time.perf_counter()
        pool.handle.createXMLFrom(f"<volume><name>{name}</name><capacity>{GiB}</capacity><allocation>0</allocation>"
                                  f"</volume>", source, flags)
        return time.perf_counter() - began

    found: dict[str, float] = {}
    reflinks = pool.name.endswith("xfs")
    if reflinks:
        found["reflink"], found["libvirt_reflink"] = best_of(
            2, lambda: clone("reflinked.raw", True),
            lambda: libvirt_clone("libvirt-reflinked.raw", libvirt.VIR_STORAGE_VOL_CREATE_REFLINK))
    peak = [0]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], worker.rss())

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        found["copy"], found["libvirt"] = best_of(2, lambda: clone("copied.raw", False if reflinks else "auto"),
                                                  lambda: libvirt_clone("libvirt-copied.raw", 0))
    finally:
        stop.set()
        sampler.join()
    found["peak"] = peak[0]
    settle()
    return found
