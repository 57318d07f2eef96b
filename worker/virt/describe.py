"""The contract's pool and volume objects, read from libvirt handles."""

from __future__ import annotations

import libvirt

from messages.objects import PoolObject, PoolState, VolumeObject
from worker.virt import volume_xml
from worker.virt.xml import parse, text_of

_STATES = {
    libvirt.VIR_STORAGE_POOL_INACTIVE: PoolState.inactive,
    libvirt.VIR_STORAGE_POOL_BUILDING: PoolState.building,
    libvirt.VIR_STORAGE_POOL_RUNNING: PoolState.running,
    libvirt.VIR_STORAGE_POOL_DEGRADED: PoolState.degraded,
    libvirt.VIR_STORAGE_POOL_INACCESSIBLE: PoolState.inaccessible,
}


def pool_object(pool: libvirt.virStoragePool, known: PoolObject | None = None) -> PoolObject:
    """The pool as it is now. With `known`, an earlier description of the same pool (same uuid),
    its type and target path are taken from there instead of asking for the pool's XML again."""
    state, capacity, allocation, available = pool.info()
    uuid = pool.UUIDString()
    if known is not None and known.uuid == uuid:
        kind, target_path = known.type, known.target_path
    else:
        root = parse(pool.XMLDesc(0))
        kind, target_path = root.get("type") or "", text_of(root, "target/path")
    return PoolObject(
        name=pool.name(),
        uuid=uuid,
        type=kind,
        state=_STATES.get(state, PoolState.inaccessible),
        persistent=bool(pool.isPersistent()),
        autostart=bool(pool.autostart()),
        capacity=capacity,
        allocation=allocation,
        available=available,
        target_path=target_path,
    )


def volume_object(pool_name: str, volume: libvirt.virStorageVol) -> VolumeObject:
    return volume_xml.read(pool_name, volume.XMLDesc(0))


def supported_pool_types(conn: libvirt.virConnect) -> list[str]:
    root = parse(conn.getStoragePoolCapabilities(0))
    return sorted(p.get("type") for p in root.findall("pool") if p.get("supported") == "yes")


def libvirt_version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def pool_type(pool: libvirt.virStoragePool) -> str:
    return parse(pool.XMLDesc(0)).get("type") or ""
