"""What a handler gets: the connection, lookups with clear errors, settings, and event emission.

One Context lives for one command across all its tries, so `changed` survives a retry: a create
whose first try made the volume and then lost the connection still reports changed=true.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import libvirt

from messages.command import Command
from messages.events import EventType, VolumeEventData
from messages.objects import VolumeObject
from worker.config import Settings
from worker.errors import invalid, not_found
from worker.events import EventPublisher
from worker.virt.gateway import LibvirtGateway


@dataclass
class Context:
    command: Command
    gateway: LibvirtGateway
    settings: Settings
    events: EventPublisher
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: bool = False

    @property
    def conn(self) -> libvirt.virConnect:
        return self.gateway.connection()

    def pool(self, name: str) -> libvirt.virStoragePool:
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise not_found(f"pool {name!r} does not exist on host {self.settings.host_id}") from None
            raise

    def find_pool(self, name: str) -> libvirt.virStoragePool | None:
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise

    def active_pool(self, name: str) -> libvirt.virStoragePool:
        pool = self.pool(name)
        if not pool.isActive():
            raise invalid(f"pool {name!r} is not running; start it with pool.start first")
        return pool

    def find_volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol:
        volume = self.find_volume(pool, name)
        if volume is None:
            raise not_found(f"volume {name!r} does not exist in pool {pool.name()!r}")
        return volume

    def volume_event(self, event: EventType, volume: VolumeObject) -> None:
        self.events.emit(event, VolumeEventData(pool=volume.pool, volume=volume, origin="command"),
                         subject=f"pools/{volume.pool}/volumes/{volume.name}", command_id=self.command.id)
