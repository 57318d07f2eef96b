"""volume.clone: a new volume holding what another holds. Three ways, chosen per command:

- reflink: libvirt's clone with VIR_STORAGE_VOL_CREATE_REFLINK. The new file shares the source's
  extents (xfs with reflink=1, btrfs): instant, nothing copied until one of them is written.
  libvirt 9.0 makes reflink clones of raw files only. `reflink: true` insists and fails
  `unsupported` where it cannot be had; `auto` (the default) tries it for raw file volumes and
  copies when the file system or libvirt says no.
- the worker's copy (worker/virt/copy.py): file volumes, same format, not flattened. A byte copy of
  the source's file, so a qcow2 overlay stays an overlay of the same backing store (its header names
  it). Progress exact to the byte; job.cancel stops it within a chunk and the partial volume is
  removed (`cancelled`).
- libvirt's clone (createXMLFrom, a copy or qemu-img convert): format conversion, `flatten: true` of
  an overlay (qemu-img convert reads through the chain), volumes that are not files. One call that
  libvirt cannot interrupt: a job.cancel asked meanwhile is honoured when it returns — the new
  volume is removed and the command ends `cancelled`. Its progress is sampled from the side.

A clone converges: an existing volume of the same capacity and format is the clone (changed=false)
— unless the worker's copy into it never finished (a worker killed mid-copy; worker/state/
volume_records.py), in which case it is removed and copied again.
"""

from __future__ import annotations

import logging

import libvirt

from messages.events import EventType
from messages.objects import VolumeObject
from messages.operations import VOLUME_CLONE
from messages.payloads import VolumeChange
from messages.results import ErrorCode
from messages.volumes import VolumeCloneArgs
from worker.errors import OperationError, conflict, invalid, unsupported
from worker.handlers import partitions, space
from worker.handlers.context import Context
from worker.handlers.convergence import differences
from worker.handlers.progress import ticker, watched
from worker.handlers.registry import handles
from worker.virt import pool_types, volume_xml
from worker.virt.copy import copy_storage
from worker.virt.describe import physical_length, volume_object
from worker.virt.pool_types import PoolKind
from worker.virt.streams import TransferCancelled

log = logging.getLogger(__name__)

REFLINK, COPY, LIBVIRT = "reflink", "copy", "libvirt"
# What libvirt and the kernel say when a reflink cannot be had here: ext4 (EOPNOTSUPP), pools on
# two file systems (EXDEV), a format libvirt clones with qemu-img (unsupported flags 0x2).
_NO_REFLINK = ("not supported", "cross-device link", "unsupported flags")


@handles(VOLUME_CLONE)
def clone(ctx: Context, a: VolumeCloneArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    kind = pool_types.kind_of(ctx.require(pool, "clone", a.pool))
    source_pool = a.source_pool or a.pool
    source_handle = ctx.active_pool(source_pool)
    pool_types.require_clone_source(ctx.pool_type(source_handle), source_pool)
    source = ctx.volume(source_handle, a.source)
    original = volume_object(source_pool, source)
    declared = ctx.declared_format(original)
    capacity = a.capacity or original.capacity
    if capacity < original.capacity:
        raise invalid(f"capacity {capacity} is smaller than the capacity {original.capacity} of the source "
                      f"{source_pool}/{a.source}; a clone cannot shrink it")
    fmt = a.format or declared
    way = _way(a, kind, original, declared, fmt)
    existing = ctx.find_volume(pool, a.name)
    if existing is not None:
        if ctx.records is None or ctx.records.unfinished_copy(a.pool, a.name) is None:
            return _same_or_conflict(ctx, a, kind, existing, capacity, fmt)
        log.warning("removing a clone whose copy never finished", extra={"command_id": ctx.command.id,
                                                                         "pool": a.pool, "volume": a.name})
        existing.delete(0)
    where = f"volume {a.name!r} in pool {a.pool!r}"
    what = f"volume.clone of {source_pool}/{a.source} into {where}"
    needed = capacity if kind.partitions else original.allocation  # the source's data; a partition all its size
    needs = f"the clone {a.name!r} of {source_pool}/{a.source} needs {needed} bytes"
    space.check_fits(pool, a.pool, needed, needs)
    with space.reported(pool, a.pool, needs):
        volume = _reflink(ctx, a, pool, source, original, fmt, what) if way == REFLINK else None
        if volume is None and way in (REFLINK, COPY):
            volume = _copy(ctx, a, pool, source, original, fmt, what)
        elif volume is None:
            volume = _libvirt_clone(ctx, a, kind, pool, source, original, fmt, what)
    ctx.changed = True
    if volume.info()[1] < capacity:  # a larger clone, or qemu-img convert kept the source's size
        volume.resize(capacity, 0)
    made = volume_object(a.pool, volume, chain=True)
    ctx.declare(made.key, fmt)
    ctx.volume_event(EventType.volume_created, made)
    return VolumeChange(**made.model_dump(), changed=True)


def _way(a: VolumeCloneArgs, kind: PoolKind, original: VolumeObject, declared: str | None, fmt: str | None) -> str:
    src = f"volume {original.name!r} of pool {original.pool!r}"
    same = fmt == declared
    files = original.type == "file" and kind.file_volumes
    overlay = original.backing is not None
    if a.reflink is True:
        if not same:
            raise unsupported(f"reflink: true shares the bytes of {src} as they are, so it cannot make a {fmt} "
                              f"volume of a {declared} one; send reflink: auto or false to convert it")
        return REFLINK
    if overlay and not a.flatten and not (same and files):
        raise invalid(f"{src} is an overlay of {original.backing.path!r}: a clone into another format, or of a "
                      f"volume that is not a file, cannot keep its backing chain; send flatten: true for a "
                      f"self-contained copy")
    if same and files and not (overlay and a.flatten):
        return REFLINK if a.reflink == "auto" and fmt == "raw" else COPY
    return LIBVIRT


def _same_or_conflict(ctx: Context, a: VolumeCloneArgs, kind: PoolKind, existing: libvirt.virStorageVol,
                      capacity: int, fmt: str | None) -> VolumeChange:
    held = volume_object(a.pool, existing, chain=True)
    found = differences(kind, held, capacity, fmt)
    if found:
        raise conflict(f"volume {a.name!r} already exists in pool {a.pool!r} and differs: {'; '.join(found)}")
    return VolumeChange(**held.model_dump(), changed=ctx.changed)


def _reflink(ctx: Context, a: VolumeCloneArgs, pool: libvirt.virStoragePool, source: libvirt.virStorageVol,
             original: VolumeObject, fmt: str | None, what: str) -> libvirt.virStorageVol | None:
    """libvirt's reflink clone; None when it cannot be had here and `auto` lets the copy take over."""
    xml = volume_xml.build(a.name, original.capacity, allocation=0, format=fmt)
    try:
        volume = pool.createXMLFrom(xml, source, libvirt.VIR_STORAGE_VOL_CREATE_REFLINK)
    except libvirt.libvirtError as exc:
        text = (exc.get_error_message() or str(exc)).lower()
        if not any(reason in text for reason in _NO_REFLINK):
            raise
        if a.reflink is True:
            raise unsupported(f"{what} with reflink: true is not possible here: libvirt: {exc.get_error_message()}; "
                              f"send reflink: auto or false to copy the data") from None
        log.info("no reflink here; copying", extra={"command_id": ctx.command.id, "reason": str(exc)})
        return None
    total = original.capacity
    ctx.progress.update(total, total, final=True)
    return _unless_cancelled(ctx, volume, what, "a reflink clone")


def _copy(ctx: Context, a: VolumeCloneArgs, pool: libvirt.virStoragePool, source: libvirt.virStorageVol,
          original: VolumeObject, fmt: str | None, what: str) -> libvirt.virStorageVol:
    """The worker's own copy, cancellable and counted to the byte (worker/virt/copy.py)."""
    length = physical_length(source, original.capacity)
    backing = original.backing
    xml = volume_xml.build(a.name, original.capacity, allocation=0, format=fmt,
                           backing_path=backing.path if backing else None,
                           backing_format=backing.format if backing else None)
    if ctx.records is not None:
        ctx.records.copy_started(a.pool, a.name, ctx.command.id)
    volume = pool.createXML(xml, 0)
    position = [0]
    tick = ticker(ctx.cancel, ctx.progress, length)

    def counted(at: int) -> None:
        position[0] = at
        tick(at)

    try:
        _, target_capacity, target_allocation = volume.info()
        ctx.progress.update(0, length)
        copy_storage(ctx.conn, source, volume, length, target_length=physical_length(volume, target_capacity),
                     target_allocation=target_allocation, tick=counted)
    except TransferCancelled:
        _remove(ctx, volume, a)
        raise OperationError(ErrorCode.cancelled, f"{what} cancelled by job.cancel after {position[0]} of {length} "
                                                  f"bytes; the partial volume was removed") from None
    except BaseException:
        _remove(ctx, volume, a)
        raise
    if ctx.records is not None:
        ctx.records.copy_ended(a.pool, a.name)
    ctx.progress.update(length, length, final=True)
    return volume


def _libvirt_clone(ctx: Context, a: VolumeCloneArgs, kind: PoolKind, pool: libvirt.virStoragePool,
                   source: libvirt.virStorageVol, original: VolumeObject, fmt: str | None,
                   what: str) -> libvirt.virStorageVol:
    xml = volume_xml.build(a.name, original.capacity, allocation=0, format=fmt)
    total = original.allocation or original.capacity

    def copied() -> tuple[int, int] | None:
        building = ctx.find_volume(pool, a.name)
        return None if building is None else (min(building.info()[2], total), total)

    with watched(ctx.progress, copied):
        if kind.partitions:  # a disk pool's new volume is a partition, named and made as such
            volume = partitions.create(ctx, pool, a.pool, a.name, fmt, lambda: pool.createXMLFrom(xml, source, 0))
        else:
            volume = pool.createXMLFrom(xml, source, 0)
    ctx.progress.update(total, total, final=True)
    return _unless_cancelled(ctx, volume, what, "a clone libvirt makes (a format conversion or a flattening copy)")


def _unless_cancelled(ctx: Context, volume: libvirt.virStorageVol, what: str, kind: str) -> libvirt.virStorageVol:
    """A cancel asked while libvirt cloned is honoured now: the new volume goes."""
    if not ctx.cancel.is_set():
        return volume
    volume.delete(0)
    raise OperationError(ErrorCode.cancelled, f"{what} cancelled by job.cancel; libvirt cannot stop {kind} once "
                                              f"started, so it ran to its end and the new volume was removed")


def _remove(ctx: Context, volume: libvirt.virStorageVol, a: VolumeCloneArgs) -> None:
    """Remove the partial volume of a copy that did not finish (the original error is what counts)."""
    try:
        volume.delete(0)
    except libvirt.libvirtError as error:
        log.error("could not remove the partial volume of a clone", extra={
            "command_id": ctx.command.id, "pool": a.pool, "volume": a.name, "error": str(error)})
        return
    if ctx.records is not None:
        ctx.records.copy_ended(a.pool, a.name)
