"""Pool operations: define, build, start, stop, delete, undefine, autostart, refresh, info, list.

Each converges: asking for the state the pool is already in succeeds with changed=false. Pool
lifecycle events come from libvirt's callbacks, not from here.
"""

from __future__ import annotations

import libvirt

from messages.objects import PoolObject
from messages.operations import (POOL_AUTOSTART, POOL_BUILD, POOL_DEFINE, POOL_DELETE, POOL_INFO, POOL_LIST,
                                 POOL_REFRESH, POOL_START, POOL_STOP, POOL_UNDEFINE)
from messages.payloads import PoolChange, PoolList, PoolUndefined
from messages.pools import (PoolAutostartArgs, PoolBuildArgs, PoolDefineArgs, PoolListArgs, PoolNameArgs,
                            PoolStartArgs)
from worker.errors import conflict, invalid, unsupported
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.handlers.paths import check_pool_target, is_local
from worker.virt import pool_xml
from worker.virt.describe import pool_object, pool_type, supported_pool_types

_BUILD_FLAGS = {None: 0, True: libvirt.VIR_STORAGE_POOL_BUILD_OVERWRITE,
                False: libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE}
# Pool types whose build formats a device, and so can be told to overwrite or spare existing data.
_FORMATTING_TYPES = {"fs", "disk", "logical"}


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
        pool.build(libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE if a.type in _FORMATTING_TYPES else 0)
        ctx.changed = True
    if a.start and not pool.isActive():
        pool.create(0)
        ctx.changed = True
    if a.autostart is not None and bool(pool.autostart()) != a.autostart:
        pool.setAutostart(int(a.autostart))
        ctx.changed = True


@handles(POOL_BUILD)
def build(ctx: Context, a: PoolBuildArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    kind = pool_type(pool)
    if a.overwrite is not None and kind not in _FORMATTING_TYPES:
        raise invalid(f"overwrite applies to pools whose build formats a device "
                      f"({', '.join(sorted(_FORMATTING_TYPES))}); pool {a.name!r} is a {kind} pool")
    if not pool.isActive():  # a running pool is built already; libvirt refuses to build it again
        pool.build(_BUILD_FLAGS[a.overwrite])
        ctx.changed = True
    return _change(ctx, pool)


@handles(POOL_START)
def start(ctx: Context, a: PoolStartArgs) -> PoolChange:
    pool = ctx.pool(a.name)
    if not pool.isActive():
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
    try:
        pool.delete(0)
        ctx.changed = True
    except libvirt.libvirtError as exc:
        # Deleting storage that is already gone converges (dir pools report the missing directory).
        if "no such file or directory" not in (exc.get_error_message() or "").lower():
            raise
    return _change(ctx, pool)


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
