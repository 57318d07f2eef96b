"""libvirt's storage pool callbacks (lifecycle and refresh), registered on every new connection.

The callbacks run on the libvirt event-loop thread: they only hand the pool's name and the event
type to `sink`, which must not block.
"""

from __future__ import annotations

from collections.abc import Callable

import libvirt

from messages.events import EventType

LIFECYCLE = {
    libvirt.VIR_STORAGE_POOL_EVENT_DEFINED: EventType.pool_defined,
    libvirt.VIR_STORAGE_POOL_EVENT_UNDEFINED: EventType.pool_undefined,
    libvirt.VIR_STORAGE_POOL_EVENT_STARTED: EventType.pool_started,
    libvirt.VIR_STORAGE_POOL_EVENT_STOPPED: EventType.pool_stopped,
    libvirt.VIR_STORAGE_POOL_EVENT_CREATED: EventType.pool_built,
    libvirt.VIR_STORAGE_POOL_EVENT_DELETED: EventType.pool_deleted,
}

Sink = Callable[[str, EventType], None]


def register(conn: libvirt.virConnect, sink: Sink) -> None:
    def lifecycle(_conn: libvirt.virConnect, pool: libvirt.virStoragePool, event: int, _detail: int,
                  _opaque: object) -> None:
        kind = LIFECYCLE.get(event)
        if kind is not None:
            sink(pool.name(), kind)

    def refreshed(_conn: libvirt.virConnect, pool: libvirt.virStoragePool, _opaque: object) -> None:
        sink(pool.name(), EventType.pool_refreshed)

    conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, lifecycle, None)
    conn.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, refreshed, None)
