"""Volume operations: create, clone, resize, wipe, delete, info, list.

create and clone converge: an existing volume with the same capacity, format (and backing) succeeds
with changed=false; one that differs fails with conflict, naming each difference (a partition may be
a little larger than asked, and its type reads back "none": worker/virt/partitions.py). resize
converges on the asked-for capacity. Clone and wipe run inside one libvirt call that reports
nothing, so their progress is sampled from the side while it runs.

Before anything is touched, each operation is checked against what the worker can run on the
pool's type (worker/virt/pool_types.py: `unsupported`), and a volume whose bytes are allocated at
once against the pool's available bytes (worker/handlers/space.py: `no_space`). Partitions of disk
pools are named, made and removed through worker/handlers/partitions.py.
"""

from __future__ import annotations

from functools import partial

import libvirt

from messages.events import EventType
from messages.objects import VolumeObject
from messages.operations import (VOLUME_CLONE, VOLUME_CREATE, VOLUME_DELETE, VOLUME_INFO, VOLUME_LIST,
                                 VOLUME_RESIZE, VOLUME_WIPE)
from messages.payloads import VolumeChange, VolumeDeleted, VolumeList
from messages.volumes import (VolumeCloneArgs, VolumeCreateArgs, VolumeDeleteArgs, VolumeListArgs,
                              VolumeNameArgs, VolumeResizeArgs, VolumeWipeArgs)
from worker.errors import conflict, invalid
from worker.handlers import partitions, space
from worker.handlers.procfs import write_positions
from worker.handlers.progress import watched
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.virt import pool_types, volume_xml
from worker.virt.describe import volume_object
from worker.virt.partitions import ROUNDING
from worker.virt.pool_types import PoolKind

_WIPE_ALGORITHMS = {name: getattr(libvirt, f"VIR_STORAGE_VOL_WIPE_ALG_{name.upper()}")
                    for name in ("zero", "nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7",
                                 "pfitzner33", "random", "trim")}
# Passes over the whole volume each algorithm makes (scrub(1)); progress counts every pass.
_WIPE_PASSES = {"zero": 1, "nnsa": 4, "dod": 4, "bsi": 9, "gutmann": 35, "schneier": 7, "pfitzner7": 7,
                "pfitzner33": 33, "random": 1, "trim": 1}

DEFAULT_FORMAT = "raw"


@handles(VOLUME_CREATE)
def create(ctx: Context, a: VolumeCreateArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    kind = pool_types.kind_of(ctx.require(pool, "create", a.pool))
    fmt = (a.format or DEFAULT_FORMAT) if kind.file_volumes else a.format
    backing_path = backing_format = None
    if a.backing is not None:
        backing = ctx.volume(ctx.active_pool(a.backing.pool), a.backing.name)
        backing_path = backing.path()
        backing_format = volume_object(a.backing.pool, backing).format
    needed = space.to_allocate(kind, fmt, a.capacity, a.allocation)
    if needed or kind.partitions:
        # Look first: the existing volume converges, whatever the pool has left (and a partition's
        # name is checked only for one that does not exist).
        existing = ctx.find_volume(pool, a.name)
        if existing is not None:
            return _converged(ctx, a, kind, fmt, backing_path, existing)
        space.check_fits(pool, a.pool, needed, _needs(a, needed))
    xml = volume_xml.build(a.name, a.capacity, allocation=a.allocation, format=fmt,
                           backing_path=backing_path, backing_format=backing_format)
    flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if a.prealloc_metadata else 0
    try:
        # Made first, compared only when the name is taken: one round trip less on the common path.
        with space.reported(pool, a.pool, _needs(a, needed)):
            if kind.partitions:
                volume = partitions.create(ctx, pool, a.pool, a.name, fmt, lambda: pool.createXML(xml, flags))
            else:
                volume = pool.createXML(xml, flags)
    except libvirt.libvirtError as exc:
        existing = ctx.find_volume(pool, a.name) if exc.get_error_code() == libvirt.VIR_ERR_STORAGE_VOL_EXIST \
            else None
        if existing is None:
            raise
        return _converged(ctx, a, kind, fmt, backing_path, existing)
    ctx.changed = True
    made = volume_object(a.pool, volume)
    ctx.volume_event(EventType.volume_created, made)
    return VolumeChange(**made.model_dump(), changed=True)


def _needs(a: VolumeCreateArgs, needed: int) -> str:
    if needed:
        return f"volume {a.name!r} needs {needed} bytes allocated up front"
    return f"volume {a.name!r} (capacity {a.capacity} bytes, allocated as data is written) needs room for its file"


def _converged(ctx: Context, a: VolumeCreateArgs, kind: PoolKind, fmt: str | None, backing_path: str | None,
               existing: libvirt.virStorageVol) -> VolumeChange:
    held = volume_object(a.pool, existing)
    found = _differences(kind, held, a.capacity, fmt)
    held_backing = held.backing.path if held.backing is not None else None
    if held_backing != backing_path:
        found.append(f"backing is {held_backing!r} on the host, the command asks for {backing_path!r}")
    if found:
        raise conflict(f"volume {a.name!r} already exists in pool {a.pool!r} and differs: {'; '.join(found)}")
    return VolumeChange(**held.model_dump(), changed=ctx.changed)


def _differences(kind: PoolKind, held: VolumeObject, capacity: int, fmt: str | None) -> list[str]:
    """How an existing volume differs from the one asked for. A partition is as asked when it is at
    most ROUNDING bytes larger (libvirt aligns partitions) and of the asked-for type or of type
    "none" (libvirt reads every partition back as "none" after a refresh)."""
    found = []
    if kind.partitions:
        same_capacity = capacity <= held.capacity < capacity + ROUNDING
        same_format = fmt is None or held.format in (fmt, "none")
    else:
        same_capacity, same_format = held.capacity == capacity, fmt is None or held.format == fmt
    if not same_capacity:
        found.append(f"capacity is {held.capacity} on the host, the command asks for {capacity}")
    if not same_format:
        found.append(f"format is {held.format!r} on the host, the command asks for {fmt!r}")
    return found


@handles(VOLUME_DELETE)
def delete(ctx: Context, a: VolumeDeleteArgs) -> VolumeDeleted:
    pool = ctx.active_pool(a.pool)
    kind = pool_types.kind_of(ctx.require(pool, "delete", a.pool))
    volume = ctx.find_volume(pool, a.name)
    if volume is not None:
        last = volume_object(a.pool, volume)
        if a.wipe:
            volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
        if kind.partitions:
            partitions.delete(ctx, pool, volume)
        else:
            volume.delete(0)
        ctx.changed = True
        ctx.volume_event(EventType.volume_deleted, last)
    return VolumeDeleted(pool=a.pool, name=a.name, changed=ctx.changed)


@handles(VOLUME_INFO)
def info(ctx: Context, a: VolumeNameArgs) -> VolumeObject:
    return ctx.describe_volume(a.pool, a.name)


@handles(VOLUME_LIST)
def list_(ctx: Context, a: VolumeListArgs) -> VolumeList:
    pool = ctx.active_pool(a.pool)
    kind = partial(ctx.pool_type, pool)  # asked only for lost+found
    volumes = sorted((v for v in pool.listAllVolumes(0) if not pool_types.hidden(v.name(), kind)), key=lambda v: v.name())
    return VolumeList(volumes=[volume_object(a.pool, v) for v in volumes])


@handles(VOLUME_CLONE)
def clone(ctx: Context, a: VolumeCloneArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    kind = pool_types.kind_of(ctx.require(pool, "clone", a.pool))
    source_pool_name = a.source_pool or a.pool
    source_pool = ctx.active_pool(source_pool_name)
    pool_types.require_clone_source(ctx.pool_type(source_pool), source_pool_name)
    source = ctx.volume(source_pool, a.source)
    original = volume_object(source_pool_name, source)
    capacity = a.capacity or original.capacity
    if capacity < original.capacity:
        raise invalid(f"capacity {capacity} is smaller than the capacity {original.capacity} of the source "
                      f"{source_pool_name}/{a.source}; a clone cannot shrink it")
    fmt = a.format or original.format
    existing = ctx.find_volume(pool, a.name)
    if existing is not None:
        held = volume_object(a.pool, existing)
        found = _differences(kind, held, capacity, fmt)
        if found:
            raise conflict(f"volume {a.name!r} already exists in pool {a.pool!r} and differs: {'; '.join(found)}")
        return VolumeChange(**held.model_dump(), changed=ctx.changed)
    total = original.allocation or original.capacity
    needed = capacity if kind.partitions else original.allocation  # the source's data; a partition all its size
    needs = f"the clone {a.name!r} of {source_pool_name}/{a.source} needs {needed} bytes"
    space.check_fits(pool, a.pool, needed, needs)
    xml = volume_xml.build(a.name, capacity, allocation=0, format=fmt)

    def copied() -> tuple[int, int] | None:
        building = ctx.find_volume(pool, a.name)
        return None if building is None else (min(building.info()[2], total), total)

    with watched(ctx.progress, copied), space.reported(pool, a.pool, needs):
        if kind.partitions:
            volume = partitions.create(ctx, pool, a.pool, a.name, fmt, lambda: pool.createXMLFrom(xml, source, 0))
        else:
            volume = pool.createXMLFrom(xml, source, 0)
    ctx.changed = True
    if volume.info()[1] < capacity:  # a format conversion (qemu-img convert) keeps the source's size
        volume.resize(capacity, 0)
    made = volume_object(a.pool, volume)
    ctx.progress.update(total, total, final=True)
    ctx.volume_event(EventType.volume_created, made)
    return VolumeChange(**made.model_dump(), changed=True)


@handles(VOLUME_RESIZE)
def resize(ctx: Context, a: VolumeResizeArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    ctx.require(pool, "resize", a.pool)
    volume = ctx.volume(pool, a.name)
    current = volume_object(a.pool, volume)
    if a.capacity != current.capacity:
        flags = libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE if a.allocate else 0
        if a.capacity < current.capacity:
            if not a.shrink:
                raise invalid(f"capacity {a.capacity} is below the current capacity {current.capacity} of volume "
                              f"{a.pool}/{a.name}; set shrink: true to shrink it")
            flags |= libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK
        # libvirt's own rule for ALLOCATE: the bytes beyond the current allocation must be available.
        needed = a.capacity - current.allocation if a.allocate else 0
        needs = f"growing volume {a.name!r} to {a.capacity} bytes, all allocated, needs {needed} more bytes"
        space.check_fits(pool, a.pool, needed, needs)
        with space.reported(pool, a.pool, needs):
            volume.resize(a.capacity, flags)
        ctx.changed = True
        current = volume_object(a.pool, volume)
        ctx.volume_event(EventType.volume_resized, current)
    return VolumeChange(**current.model_dump(), changed=ctx.changed)


@handles(VOLUME_WIPE)
def wipe(ctx: Context, a: VolumeWipeArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    kind = ctx.require(pool, "wipe", a.pool)
    pool_types.require_wipe_algorithm(kind, a.algorithm, a.pool)
    volume = ctx.volume(pool, a.name)
    capacity = volume.info()[1]
    total = capacity * _WIPE_PASSES[a.algorithm]
    probe = _pass_counter(volume.path(), capacity, total) if ctx.libvirt_is_local else (lambda: None)
    with watched(ctx.progress, probe):
        volume.wipePattern(_WIPE_ALGORITHMS[a.algorithm], 0)
    ctx.changed = True
    ctx.progress.update(total, total, final=True)
    wiped = volume_object(a.pool, volume)
    ctx.volume_event(EventType.volume_wiped, wiped)
    return VolumeChange(**wiped.model_dump(), changed=True)


def _pass_counter(path: str, capacity: int, total: int):
    """Bytes a wipe has written so far, from the file offset of whoever writes the volume (libvirtd
    for zero, scrub for the others); each time the offset falls back, a pass has ended."""
    state = {"passes": 0, "last": 0}

    def probe() -> tuple[int, int] | None:
        positions = write_positions(path)
        if not positions:
            return None
        position = min(max(positions), capacity)
        if position < state["last"]:
            state["passes"] += 1
        state["last"] = position
        return min(state["passes"] * capacity + position, total), total

    return probe
