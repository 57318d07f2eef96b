"""Volumes of disk pools: partitions, made by libvirt, named, removed and cleaned up by the worker.

libvirt 9.0.0 gets two things wrong on devices whose partitions are named with a 'p' (loop, nvme,
nbd, mmcblk; worker/virt/partitions.py has the naming):
- deleting a partition runs `parted DEV rm --script pN` and parted answers "Partition doesn't
  exist": the worker removes it itself with `parted -s DEV rm N` and refreshes the pool (what
  libvirt does after its own removal);
- a create whose name is not the one libvirt expects fails after the partition was made, and the
  partition stays: the worker computes the name first and refuses another (`invalid`), and after
  any failed create removes a partition that appeared during it.

Both need the device, so they run only when libvirtd is on this machine; with a remote libvirt the
worker leaves partitions to libvirt alone. Changes to one device's table are made one at a time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable

import libvirt

from messages.results import ErrorCode
from worker.errors import OperationError, invalid
from worker.handlers.context import Context
from worker.virt import partitions
from worker.virt.xml import attr_of, parse

log = logging.getLogger(__name__)

PARTED_TIMEOUT = 60.0

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(device: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(device, threading.Lock())


def source_device(pool: libvirt.virStoragePool) -> str:
    return attr_of(parse(pool.XMLDesc(0)), "source/device", "path") or ""


def _parted(*args: str) -> str:
    try:
        done = subprocess.run(["parted", "-s", *args], capture_output=True, text=True, timeout=PARTED_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(ErrorCode.internal, f"parted {' '.join(args)} could not run: {exc}") from None
    if done.returncode != 0:
        raise OperationError(ErrorCode.internal, f"parted {' '.join(args)} failed: "
                                                 f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def read_table(device: str) -> partitions.Table:
    try:
        return partitions.parse_parted(_parted("-m", device, "unit", "B", "print"))
    except OperationError as exc:
        if "unrecognised disk label" in exc.message:
            return partitions.Table(label=None)
        raise


def _named_by_kernel(device: str) -> bool:
    """True when the pool names its device by the kernel's name (/dev/loop0, not a symlink such as
    /dev/disk/by-id/...): only then is the partitions' name the one computed here."""
    return device.startswith("/dev/") and os.path.realpath(device) == device


def create(ctx: Context, pool: libvirt.virStoragePool, pool_name: str, name: str, fmt: str | None,
           make: Callable[[], libvirt.virStorageVol]) -> libvirt.virStorageVol:
    """`make()` (a createXML or createXMLFrom of the pool) once the name is the one libvirt will
    give the new partition; a partition made by a failed `make()` is removed again."""
    device = source_device(pool)
    if not ctx.libvirt_is_local or not device:
        return make()
    with _lock(device):
        before = read_table(device)
        _catch_up(pool, device, before)
        number = partitions.next_number(before, fmt)
        if number is not None and _named_by_kernel(device):
            expected = partitions.partition_name(device, number)
            if name != expected:
                raise invalid(f"the volumes of disk pool {pool_name!r} are partitions of {device}, named by the "
                              f"kernel: the next partition will be {expected!r}, so name the volume {expected!r} "
                              f"(got {name!r})")
        try:
            return make()
        except (libvirt.libvirtError, OperationError):
            _remove_new(pool, device, before)
            raise


def _catch_up(pool: libvirt.virStoragePool, device: str, table: partitions.Table) -> None:
    """Refresh the pool when the device holds partitions libvirt does not list (left by a failed
    create outside the worker, or made with parted): libvirt finds no free extent until it has
    re-read the table. Nothing is removed that the worker did not make."""
    listed = {partitions.number_of(device, name) for name in pool.listVolumes()}
    if table.numbers - listed:
        log.info("disk pool lists fewer partitions than its device holds; refreshing it",
                 extra={"pool": pool.name(), "device": device, "unlisted": sorted(table.numbers - listed)})
        pool.refresh(0)


def _remove_new(pool: libvirt.virStoragePool, device: str, before: partitions.Table) -> None:
    try:
        leaked = read_table(device).numbers - before.numbers
        for number in sorted(leaked, reverse=True):
            _parted(device, "rm", str(number))
        if leaked:
            log.warning("removed the partition a failed create left behind",
                        extra={"pool": pool.name(), "device": device, "partitions": sorted(leaked)})
            pool.refresh(0)
    except (libvirt.libvirtError, OperationError) as exc:
        log.warning("could not check for a partition left by a failed create",
                    extra={"pool": pool.name(), "device": device, "error": str(exc)})


def delete(ctx: Context, pool: libvirt.virStoragePool, volume: libvirt.virStorageVol) -> None:
    """Remove the partition and have libvirt re-read the table; libvirt's own delete where the
    worker cannot reach the device or cannot tell the partition's number."""
    device = source_device(pool)
    number = partitions.number_of(device, volume.name()) if device else None
    if not ctx.libvirt_is_local or number is None:
        volume.delete(0)
        return
    with _lock(device):
        if number in read_table(device).numbers:
            _parted(device, "rm", str(number))
        pool.refresh(0)


def holding(ctx: Context, pool: libvirt.virStoragePool) -> list[str]:
    """Names of the partitions on the pool's device ([] where the worker cannot look)."""
    device = source_device(pool)
    if not ctx.libvirt_is_local or not device or not os.path.exists(device):
        return []
    return [partitions.partition_name(device, p.number) for p in read_table(device).partitions]
