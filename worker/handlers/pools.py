"""Pool operations: define, build, start, stop, delete, undefine, autostart, refresh, info, list.

Each converges: asking for the state the pool is already in succeeds with changed=false. Pool
lifecycle events come from libvirt's callbacks, not from here.

Building a pool whose build formats a device (fs, disk, logical) never destroys data unless told
to (`overwrite: true`): pool.build without overwrite, pool.define with build and pool.start with
build all build with NO_OVERWRITE, which formats a blank device and refuses one that holds
something. A device that already holds exactly the pool's format is what was asked for: libvirt's
"already formatted using '<format>'" converges (changed=false). (libvirt's own defaults differ:
build without flags and start WITH_BUILD make only an fs pool's mount point, never a filesystem.)

pool.delete does what libvirt does, with one guard: a stopped fs pool loses only its mount point
(the filesystem stays on the device); a disk pool's delete erases the device's partition table, so
it is refused while partitions exist.
"""

from __future__ import annotations

import re

import libvirt

from messages.objects import PoolObject
from messages.operations import (POOL_AUTOSTART, POOL_BUILD, POOL_DEFINE, POOL_DELETE, POOL_INFO, POOL_LIST,
                                 POOL_REFRESH, POOL_START, POOL_STOP, POOL_UNDEFINE)
from messages.payloads import PoolChange, PoolList, PoolUndefined
from messages.results import ErrorCode
from messages.pools import (PoolAutostartArgs, PoolBuildArgs, PoolDefineArgs, PoolListArgs, PoolNameArgs,
                            PoolStartArgs)
from worker.errors import OperationError, conflict, invalid, unsupported
from worker.handlers import partitions
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.handlers.paths import check_pool_target, is_local
from worker.virt import pool_types, pool_xml
from worker.virt.describe import pool_object, pool_type, supported_pool_types
from worker.virt.errors import details

OVERWRITE = libvirt.VIR_STORAGE_POOL_BUILD_OVERWRITE
NO_OVERWRITE = libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
_ALREADY_BUILT = re.compile(r"already formatted using '([^']+)'")


def _change(ctx: Context, pool: libvirt.virStoragePool) -> PoolChange:
    return PoolChange(**pool_object(pool).model_dump(), changed=ctx.changed)


@handles(POOL_DEFINE)
def define(ctx: Context, a: PoolDefineArgs) -> PoolChange:
    check_pool_target(a, ctx.settings.allowed_roots, local=is_local(ctx.settings.libvirt_uri))
    supported = supported_pool_types(ctx.conn)
    if a.type not in supported:
        raise unsupported(f"libvirt on host {ctx.settings.host_id} has no backend for {a.type} pools "
                          f"(supported: {', '.join(supported)})")
    pool = ctx.find_pool(a.name)
    if pool is not None:
        wanted = a.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                              exclude={"build", "start", "autostart"})
        wanted["type"] = a.type
        held = pool_xml.read_spec(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
        found = pool_xml.differences(wanted, held)
        if found:
            raise conflict(f"pool {a.name!r} already exists with a different definition: {'; '.join(found)}")
    defined_now = pool is None
    if pool is None or not pool.isPersistent():
        pool = ctx.conn.storagePoolDefineXML(pool_xml.build(a), libvirt.VIR_STORAGE_POOL_DEFINE_VALIDATE)
        ctx.gateway.forget_pools(a.name)
        ctx.changed = True
    try:
        _bring_up(ctx, pool, a)
    except libvirt.libvirtError:
        if defined_now and not pool.isActive():
            pool.undefine()  # leave no half-made pool behind: the definition goes with the failure
            ctx.gateway.forget_pools(a.name)
            ctx.changed = False
        raise
    return _change(ctx, pool)


def _bring_up(ctx: Context, pool: libvirt.virStoragePool, a: PoolDefineArgs) -> None:
    if a.build and not pool.isActive():
        _build(ctx, pool, a.type, None)
    if a.start and not pool.isActive():
        pool.create(0)
        ctx.changed = True
    if a.autostart is not None and bool(pool.autostart()) != a.autostart:
        pool.setAutostart(int(a.autostart))
        ctx.changed = True


def _build(ctx: Context, pool: libvirt.virStoragePool, kind: str, overwrite: bool | None) -> None:
    """Build the pool: pools that format a device with OVERWRITE only when told to, else with
    NO_OVERWRITE, where a device that already holds the pool's format converges; other pools with
    libvirt's default."""
    if not pool_types.kind_of(kind).formats_device:
        pool.build(0)
        ctx.changed = True
        return
    if overwrite:
        pool.build(OVERWRITE)
        ctx.changed = True
        return
    try:
        pool.build(NO_OVERWRITE)
        ctx.changed = True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_STORAGE_POOL_BUILT \
                or not _ALREADY_BUILT.search(exc.get_error_message() or ""):
            raise


@handles(POOL_BUILD)
def build(ctx: Context, a: PoolBuildArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    kind = pool_type(pool)
    if a.overwrite is not None and not pool_types.kind_of(kind).formats_device:
        formatting = sorted(t for t, k in pool_types.POOL_TYPES.items() if k.formats_device)
        raise invalid(f"overwrite applies to pools whose build formats a device ({', '.join(formatting)}); "
                      f"pool {a.name!r} is a {kind} pool")
    if not pool.isActive():  # a running pool is built already; libvirt refuses to build it again
        _build(ctx, pool, kind, a.overwrite)
    return _change(ctx, pool)


@handles(POOL_START)
def start(ctx: Context, a: PoolStartArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    if not pool.isActive():
        kind = pool_type(pool)
        if a.build and pool_types.kind_of(kind).formats_device:
            _build(ctx, pool, kind, None)
            pool.create(0)
        else:
            pool.create(libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if a.build else 0)
        ctx.changed = True
    return _change(ctx, pool)


@handles(POOL_STOP)
def stop(ctx: Context, a: PoolNameArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    if pool.isActive():
        pool.destroy()
        ctx.changed = True
    return _change(ctx, pool)


@handles(POOL_DELETE)
def delete(ctx: Context, a: PoolNameArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    if pool.isActive():
        raise invalid(f"pool {a.name!r} is running; stop it with pool.stop before deleting its storage")
    kind = pool_type(pool)
    if pool_types.kind_of(kind).partitions:
        held = partitions.holding(ctx, pool)
        if held:
            raise invalid(f"pool.delete of disk pool {a.name!r} would erase the partition table of "
                          f"{partitions.source_device(pool)} and with it its partitions ({', '.join(held)}); "
                          f"start the pool and delete those volumes first")
    try:
        pool.delete(0)
        ctx.changed = True
    except libvirt.libvirtError as exc:
        text = (exc.get_error_message() or "").lower()
        # Deleting storage that is already gone converges (dir pools report the missing directory).
        if "no such file or directory" in text:
            return _change(ctx, pool)
        if "directory not empty" in text:
            raise OperationError(ErrorCode.invalid, _not_empty(a.name, kind, pool), libvirt=details(exc)) from None
        raise
    return _change(ctx, pool)


def _not_empty(name: str, kind: str, pool: libvirt.virStoragePool) -> str:
    target = pool_object(pool).target_path
    if pool_types.kind_of(kind).mounts:
        return (f"pool {name!r} is stopped, so pool.delete removes only its mount point {target} (the "
                f"filesystem and its volumes stay on the device), and {target} is not empty: it holds "
                f"files of its own, not on the device; remove them, then delete again")
    return (f"pool.delete of {kind} pool {name!r} removes its directory {target}, which still holds files; "
            f"delete the volumes first")


@handles(POOL_UNDEFINE)
def undefine(ctx: Context, a: PoolNameArgs) -> PoolUndefined:
    pool = ctx.find_pool(a.name)
    if pool is not None:
        if pool.isActive():
            raise invalid(f"pool {a.name!r} is running; stop it with pool.stop before undefining it")
        pool.undefine()
        ctx.gateway.forget_pools(a.name)
        ctx.changed = True
    return PoolUndefined(name=a.name, changed=ctx.changed)


@handles(POOL_AUTOSTART)
def autostart(ctx: Context, a: PoolAutostartArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    if bool(pool.autostart()) != a.enabled:
        if not pool.isPersistent():
            raise invalid(f"pool {a.name!r} is transient; only a defined (persistent) pool can autostart")
        pool.setAutostart(int(a.enabled))
        ctx.changed = True
    return _change(ctx, pool)


@handles(POOL_REFRESH)
def refresh(ctx: Context, a: PoolNameArgs) -> PoolChange:
    pool = ctx.active_pool(a.name)
    pool.refresh(0)
    return _change(ctx, pool)


@handles(POOL_INFO)
def info(ctx: Context, a: PoolNameArgs) -> PoolObject:
    return pool_object(ctx.pool(a.name))


@handles(POOL_LIST)
def list_(ctx: Context, a: PoolListArgs) -> PoolList:
    flags = {None: 0, "active": libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE,
             "inactive": libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE}[a.state]
    pools = sorted(ctx.conn.listAllStoragePools(flags), key=lambda p: p.name())
    return PoolList(pools=[pool_object(p) for p in pools])
