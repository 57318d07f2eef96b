"""Volume lifecycle: create, delete, info, list.

create converges: an existing volume with the same capacity, format and backing succeeds with
changed=false; one that differs fails with conflict, naming each difference.
"""

from __future__ import annotations

import libvirt

from messages.events import EventType
from messages.objects import VolumeObject
from messages.payloads import VolumeChange, VolumeDeleted, VolumeList
from messages.volumes import VolumeCreateArgs, VolumeDeleteArgs, VolumeListArgs, VolumeNameArgs
from worker.errors import conflict
from worker.handlers.context import Context
from worker.virt import volume_xml
from worker.virt.describe import pool_type, volume_object

DEFAULT_FORMAT = "raw"
# Pool types whose volumes are files with a format of their own; the others (logical, disk, iscsi...)
# hold raw block devices and take no format.
_FILE_POOLS = {"dir", "fs", "netfs", "gluster", "vstorage"}


def create(ctx: Context, a: VolumeCreateArgs) -> VolumeChange:
    pool = ctx.active_pool(a.pool)
    file_pool = pool_type(pool) in _FILE_POOLS
    fmt = (a.format or DEFAULT_FORMAT) if file_pool else a.format
    backing_path = backing_format = None
    if a.backing is not None:
        backing = ctx.volume(ctx.active_pool(a.backing.pool), a.backing.name)
        backing_path = backing.path()
        backing_format = volume_object(a.backing.pool, backing).format
    existing = ctx.find_volume(pool, a.name)
    if existing is not None:
        _same_or_conflict(a, fmt, backing_path, existing)
        return VolumeChange(**volume_object(a.pool, existing).model_dump(), changed=ctx.changed)
    xml = volume_xml.build(a.name, a.capacity, allocation=a.allocation, format=fmt,
                           backing_path=backing_path, backing_format=backing_format)
    flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if a.prealloc_metadata else 0
    volume = pool.createXML(xml, flags)
    ctx.changed = True
    made = volume_object(a.pool, volume)
    ctx.volume_event(EventType.volume_created, made)
    return VolumeChange(**made.model_dump(), changed=True)


def _same_or_conflict(a: VolumeCreateArgs, fmt: str | None, backing_path: str | None,
                      existing: libvirt.virStorageVol) -> None:
    xml = existing.XMLDesc(0)
    held = volume_xml.read(a.pool, xml)
    held_backing, _ = volume_xml.backing_of(xml)
    found = []
    if held.capacity != a.capacity:
        found.append(f"capacity is {held.capacity} on the host, the command asks for {a.capacity}")
    if fmt is not None and held.format != fmt:
        found.append(f"format is {held.format!r} on the host, the command asks for {fmt!r}")
    if held_backing != backing_path:
        found.append(f"backing is {held_backing!r} on the host, the command asks for {backing_path!r}")
    if found:
        raise conflict(f"volume {a.name!r} already exists in pool {a.pool!r} and differs: {'; '.join(found)}")


def delete(ctx: Context, a: VolumeDeleteArgs) -> VolumeDeleted:
    pool = ctx.active_pool(a.pool)
    volume = ctx.find_volume(pool, a.name)
    if volume is not None:
        last = volume_object(a.pool, volume)
        if a.wipe:
            volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
        volume.delete(0)
        ctx.changed = True
        ctx.volume_event(EventType.volume_deleted, last)
    return VolumeDeleted(pool=a.pool, name=a.name, changed=ctx.changed)


def info(ctx: Context, a: VolumeNameArgs) -> VolumeObject:
    return volume_object(a.pool, ctx.volume(ctx.active_pool(a.pool), a.name))


def list_(ctx: Context, a: VolumeListArgs) -> VolumeList:
    pool = ctx.active_pool(a.pool)
    volumes = sorted(pool.listAllVolumes(0), key=lambda v: v.name())
    return VolumeList(volumes=[volume_object(a.pool, v) for v in volumes])
