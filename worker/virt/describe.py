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


def pool_object(pool: libvirt.virStoragePool) -> PoolObject:
    state, capacity, allocation, available = pool.info()
    root = parse(pool.XMLDesc(0))
    return PoolObject(
        name=pool.name(),
        uuid=pool.UUIDString(),
        type=root.get("type") or "",
        state=_STATES.get(state, PoolState.inaccessible),
        persistent=bool(pool.isPersistent()),
        autostart=bool(pool.autostart()),
        capacity=capacity,
        allocation=allocation,
        available=available,
        target_path=text_of(root, "target/path"),
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
