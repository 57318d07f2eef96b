"""Describing the host: its libvirt, the pool types it supports, and what this worker can do with each."""

from __future__ import annotations

from messages.operations import HOST_INFO
from messages.payloads import HostInfo
from messages.volumes import NoArgs
from worker import __version__
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.virt.describe import libvirt_version, pool_capabilities


@handles(HOST_INFO)
def info(ctx: Context, _args: NoArgs) -> HostInfo:
    conn = ctx.conn
    capabilities = pool_capabilities(conn.getStoragePoolCapabilities(0))
    return HostInfo(host_id=ctx.settings.host_id, hostname=conn.getHostname(), uri=conn.getURI(),
                    libvirt_version=libvirt_version(conn.getLibVersion()), worker_version=__version__,
                    pool_types=[c.type for c in capabilities], pool_capabilities=capabilities)
