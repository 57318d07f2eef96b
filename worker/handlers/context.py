"""What a handler gets: the connection, lookups with clear errors, settings, and event emission.

One Context lives for one command across all its tries, so `changed` survives a retry: a create
whose first try made the volume and then lost the connection still reports changed=true.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from messages.command import Command
from messages.events import DiskRef, EventType, VolumeEventData
from messages.objects import VolumeObject, VolumeOperation
from worker.config import Settings
from worker.errors import not_found
from worker.transport.events import EventPublisher
from worker.state.inventory import Inventory
from worker.state.volume_records import VolumeRecords
from worker.handlers.progress import ProgressReporter
from worker.virt import pool_types
from worker.virt.backing import BackingResolver
from worker.virt.describe import described_volume
from worker.virt.gateway import LibvirtGateway


@dataclass
class Context:
    command: Command
    gateway: LibvirtGateway
    settings: Settings
    events: EventPublisher
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: bool = False
    progress: ProgressReporter | None = None
    inventory: Inventory | None = None
    records: VolumeRecords | None = None
    touch: Callable[[str], None] | None = None
    # Facts a handler must carry from one of its tries to the next (e.g. a volume's length before an
    # upload began, which a failed sparse upload may have cut).
    memo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = ProgressReporter(self.events, self.command.id, self.command.op)

    @property
    def libvirt_is_local(self) -> bool:
        """True when libvirtd runs on this machine, so its files and processes can be looked at."""
        uri = self.settings.libvirt_uri
        return "://" in uri and uri.split("://", 1)[1].startswith("/")

    @property
    def conn(self) -> libvirt.virConnect:
        return self.gateway.connection()

    def pool(self, name: str) -> libvirt.virStoragePool:
        handle = self.find_pool(name)
        if handle is None:
            raise not_found(f"pool {name!r} does not exist on host {self.settings.host_id}")
        return handle

    def find_pool(self, name: str) -> libvirt.virStoragePool | None:
        return self.gateway.pool(name)

    def active_pool(self, name: str) -> libvirt.virStoragePool:
        """The pool, for an operation that needs it running. Whether it runs is not asked here (a
        round trip per command): libvirt refuses volume work on a stopped pool, and that refusal
        is reported as `invalid` naming the pool (worker.virt.errors)."""
        return self.pool(name)

    def find_volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        """The volume, or None; lost+found of a mounted pool is the filesystem's, never a volume
        (worker.virt.pool_types.hidden)."""
        if pool_types.hidden(name, lambda: self.gateway.pool_type(pool)):
            return None
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def pool_type(self, pool: libvirt.virStoragePool) -> str:
        return self.gateway.pool_type(pool)

    def require(self, pool: libvirt.virStoragePool, operation: VolumeOperation, pool_name: str) -> str:
        """The pool's type, once the worker knows it can run `operation` there (else `unsupported`,
        before anything is touched)."""
        kind = self.gateway.pool_type(pool)
        pool_types.require(kind, operation, pool_name)
        return kind

    def volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol:
        volume = self.find_volume(pool, name)
        if volume is None:
            raise not_found(f"volume {name!r} does not exist in pool {pool.name()!r}")
        return volume

    def describe_volume(self, pool_name: str, name: str) -> VolumeObject:
        """The volume object, with its backing chain: one round trip with a handle kept from an earlier command
        (worker.virt.handles), the look-up and the read otherwise. A kept handle whose volume or
        pool is gone takes the look-up path, which names what is missing."""
        kept = self.gateway.volumes.get(pool_name, name)
        if kept is not None:
            try:
                return described_volume(pool_name, kept.XMLDesc(0), BackingResolver(self.conn), chain=True)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
                    raise
                self.gateway.volumes.forget(pool_name, name)
        handle = self.volume(self.active_pool(pool_name), name)
        described = described_volume(pool_name, handle.XMLDesc(0), BackingResolver(self.conn), chain=True)
        self.gateway.volumes.put(pool_name, name, handle)
        return described

    def declared_format(self, volume: VolumeObject) -> str | None:
        """The format the volume was declared with (worker/state/volume_records.py): the recorded
        one, or, for a volume the worker never made, what libvirt says now — recorded from now on."""
        held = self.records.declared(volume.key) if self.records is not None else None
        if held is None and volume.format is not None:
            self.declare(volume.key, volume.format)
        return held or volume.format

    def declare(self, key: str, fmt: str | None) -> None:
        if self.records is not None and fmt is not None:
            self.records.declare(key, fmt)

    def forget_volume(self, key: str) -> None:
        if self.records is not None:
            self.records.forget(key)

    def volume_event(self, event: EventType, volume: VolumeObject, disk: DiskRef | None = None) -> None:
        """Publish a volume event this command caused (`disk` names the guest disk for attached/
        detached), and keep the inventory in step with it so that the next re-listing does not
        report the change again as made from outside."""
        if self.inventory is not None:
            if event is EventType.volume_deleted:
                self.inventory.drop_volume(volume.pool, volume.name)
            else:
                self.inventory.put_volume(volume)
        self.events.emit(event, VolumeEventData(pool=volume.pool, volume=volume, origin="command", disk=disk),
                         subject=f"pools/{volume.pool}/volumes/{volume.name}", command_id=self.command.id)
        if self.touch is not None:
            self.touch(volume.pool)
