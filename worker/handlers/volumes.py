"""Volume operations: create, resize, wipe, delete, info, list (volume.clone is in clones.py).

create converges: an existing volume with the same capacity, format (and backing) succeeds with
changed=false; one that differs fails with conflict, naming each difference (a partition may be a
little larger than asked, and its type reads back "none": worker/handlers/convergence.py). resize
converges on the asked-for capacity. A wipe runs inside one libvirt call that reports nothing, so
its progress is sampled from the side while it runs.

Before anything is touched, each operation is checked against what the worker can run on the
pool's type (worker/virt/pool_types.py: `unsupported`), against the domains and volumes that use the
volume (worker/handlers/in_use.py: `in_use`), and a volume whose bytes are allocated at once against
the pool's available bytes (worker/handlers/space.py: `no_space`). Partitions of disk pools are
named, made and removed through worker/handlers/partitions.py.
"""

from __future__ import annotations

from functools import partial

import libvirt

from messages.events import EventType
from messages.objects import VolumeObject
from messages.operations import VOLUME_CREATE, VOLUME_DELETE, VOLUME_INFO, VOLUME_LIST, VOLUME_RESIZE, VOLUME_WIPE
from messages.payloads import VolumeChange, VolumeDeleted, VolumeList, VolumeResized
from messages.volumes import (VolumeCreateArgs, VolumeDeleteArgs, VolumeListArgs, VolumeNameArgs, VolumeResizeArgs,
                              VolumeWipeArgs)
from worker.errors import conflict, invalid
from worker.handlers import in_use, partitions, space
from worker.handlers.context import Context
from worker.handlers.convergence import differences
from worker.handlers.in_use import refuse_if_in_use
from worker.handlers.procfs import write_positions
from worker.handlers.progress import watched
from worker.handlers.registry import handles
from worker.virt import pool_types, volume_xml
from worker.virt.backing import BackingResolver
from worker.virt.describe import volume_object
from worker.virt.pool_types import PoolKind
from worker.virt.usage import DomainScan

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
    made = volume_object(a.pool, volume, chain=True)
    ctx.declare(made.key, fmt or made.format)
    ctx.volume_event(EventType.volume_created, made)
    return VolumeChange(**made.model_dump(), changed=True)


def _needs(a: VolumeCreateArgs, needed: int) -> str:
    if needed:
        return f"volume {a.name!r} needs {needed} bytes allocated up front"
    return f"volume {a.name!r} (capacity {a.capacity} bytes, allocated as data is written) needs room for its file"


def _converged(ctx: Context, a: VolumeCreateArgs, kind: PoolKind, fmt: str | None, backing_path: str | None,
               existing: libvirt.virStorageVol) -> VolumeChange:
    held = volume_object(a.pool, existing, chain=True)
    found = differences(kind, held, a.capacity, fmt)
    held_backing = held.backing.path if held.backing is not None else None
    if held_backing != backing_path:
        found.append(f"backing is {held_backing!r} on the host, the command asks for {backing_path!r}")
    if found:
        raise conflict(f"volume {a.name!r} already exists in pool {a.pool!r} and differs: {'; '.join(found)}")
    ctx.declare(held.key, fmt or held.format)
    return VolumeChange(**held.model_dump(), changed=ctx.changed)


@handles(VOLUME_DELETE)
def delete(ctx: Context, a: VolumeDeleteArgs) -> VolumeDeleted:
    pool = ctx.active_pool(a.pool)
    kind = pool_types.kind_of(ctx.require(pool, "delete", a.pool))
    volume = ctx.find_volume(pool, a.name)
    if volume is not None:
        last = volume_object(a.pool, volume)
        refuse_if_in_use(ctx, in_use.DELETE, a.pool, a.name, last.path, force=a.force)
        if a.wipe:
            volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
        if kind.partitions:
            partitions.delete(ctx, pool, volume)
        else:
            volume.delete(0)
        ctx.forget_volume(last.key)
        ctx.changed = True
        ctx.volume_event(EventType.volume_deleted, last)
    return VolumeDeleted(pool=a.pool, name=a.name, changed=ctx.changed)


@handles(VOLUME_INFO)
def info(ctx: Context, a: VolumeNameArgs) -> VolumeObject:
    described = ctx.describe_volume(a.pool, a.name)
    return _with_users(described, DomainScan.read(ctx.conn))


@handles(VOLUME_LIST)
def list_(ctx: Context, a: VolumeListArgs) -> VolumeList:
    """One scan of the domains answers for every volume of the listing (worker/virt/usage.py)."""
    pool = ctx.active_pool(a.pool)
    kind = partial(ctx.pool_type, pool)  # asked only for lost+found
    volumes = sorted((v for v in pool.listAllVolumes(0) if not pool_types.hidden(v.name(), kind)),
                     key=lambda v: v.name())
    resolver = BackingResolver(ctx.conn)
    scan = DomainScan.read(ctx.conn)
    return VolumeList(volumes=[volume_object(a.pool, v, resolver, chain=True, users=_users_in(scan))
                               for v in volumes])


def _users_in(scan: DomainScan):
    """The domain names a scan finds using a volume (the volume object's `in_use_by`)."""
    def users(volume: VolumeObject) -> list[str]:
        return in_use.domain_names(scan.users(volume.pool, volume.name, volume.path))

    return users


def _with_users(volume: VolumeObject, scan: DomainScan) -> VolumeObject:
    return volume.model_copy(update={"in_use_by": _users_in(scan)(volume)})



@handles(VOLUME_RESIZE)
def resize(ctx: Context, a: VolumeResizeArgs) -> VolumeResized:
    """A shrink is refused while the volume is in use (worker/handlers/in_use.py). A volume that
    running domains have is grown through them (virDomainBlockResize): qemu grows the image and
    tells the guest; grown behind qemu's back, the guest would never see the new size."""
    pool = ctx.active_pool(a.pool)
    ctx.require(pool, "resize", a.pool)
    volume = ctx.volume(pool, a.name)
    current = volume_object(a.pool, volume)
    users = None
    if a.capacity != current.capacity:
        flags = libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE if a.allocate else 0
        if a.capacity < current.capacity:
            if not a.shrink:
                raise invalid(f"capacity {a.capacity} is below the current capacity {current.capacity} of volume "
                              f"{a.pool}/{a.name}; set shrink: true to shrink it")
            users = refuse_if_in_use(ctx, in_use.SHRINK, a.pool, a.name, current.path, force=a.force)
            volume.resize(a.capacity, flags | libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK)
        else:
            scan = DomainScan.read(ctx.conn)
            users = in_use.domain_names(scan.users(a.pool, a.name, current.path))
            running = scan.live_targets(a.pool, a.name, current.path)
            if running:
                _grow_online(ctx, a, running)
            else:
                # libvirt's own rule for ALLOCATE: the bytes beyond the current allocation must be available.
                needed = a.capacity - current.allocation if a.allocate else 0
                needs = f"growing volume {a.name!r} to {a.capacity} bytes, all allocated, needs {needed} more bytes"
                space.check_fits(pool, a.pool, needed, needs)
                with space.reported(pool, a.pool, needs):
                    volume.resize(a.capacity, flags)
        ctx.changed = True
        current = volume_object(a.pool, volume).model_copy(update={"in_use_by": users})
        ctx.volume_event(EventType.volume_resized, current)
    return VolumeResized(**current.model_dump(), changed=ctx.changed, online=ctx.memo.get("resize.online", False))


def _grow_online(ctx: Context, a: VolumeResizeArgs, running: list[tuple[str, str]]) -> None:
    if a.allocate:
        names = ", ".join(sorted({f"{domain!r}" for domain, _ in running}))
        raise invalid(f"volume {a.pool}/{a.name} is a disk of running domain {names}: it is grown through the "
                      f"domain, which cannot allocate the new space up front; send allocate: false")
    for domain, target in running:
        ctx.conn.lookupByName(domain).blockResize(target, a.capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        ctx.memo["resize.online"] = True


@handles(VOLUME_WIPE)
def wipe(ctx: Context, a: VolumeWipeArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    pool_types.require_wipe_algorithm(ctx.require(pool, "wipe", a.pool), a.algorithm, a.pool)
    volume = ctx.volume(pool, a.name)
    users = refuse_if_in_use(ctx, in_use.WIPE, a.pool, a.name, volume.path(), force=a.force)
    capacity = volume.info()[1]
    total = capacity * _WIPE_PASSES[a.algorithm]
    probe = _pass_counter(volume.path(), capacity, total) if ctx.libvirt_is_local else (lambda: None)
    with watched(ctx.progress, probe):
        volume.wipePattern(_WIPE_ALGORITHMS[a.algorithm], 0)
    ctx.changed = True
    ctx.progress.update(total, total, final=True)
    wiped = volume_object(a.pool, volume).model_copy(update={"in_use_by": users})
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
