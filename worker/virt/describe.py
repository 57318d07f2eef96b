"""The contract's pool and volume objects, read from libvirt handles, and the pool capabilities of
host.info."""

from __future__ import annotations

import libvirt

from messages.objects import PoolObject, PoolState, VolumeObject
from messages.payloads import PoolCapability
from worker.virt import pool_types, volume_xml
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
    only its state and sizes are asked for (one round trip instead of four): type, target path,
    persistence and autostart are taken from there. The periodic re-listing asks for everything."""
    state, capacity, allocation, available = pool.info()
    uuid = pool.UUIDString()
    if known is not None and known.uuid == uuid:
        return known.model_copy(update={"state": _STATES.get(state, PoolState.inaccessible), "capacity": capacity,
                                        "allocation": allocation, "available": available})
    root = parse(pool.XMLDesc(0))
    kind = root.get("type") or ""
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
        target_path=text_of(root, "target/path"),
        operations=pool_types.operations(kind),
    )


def volume_object(pool_name: str, volume: libvirt.virStorageVol) -> VolumeObject:
    return volume_xml.read(pool_name, volume.XMLDesc(0), locator(volume.connect()))


def locator(conn: libvirt.virConnect) -> volume_xml.Locate:
    """Finds (pool, name) of the volume at a path among the connection's pools: a backing store.
    One round trip, made only for volumes that have one."""

    def locate(path: str) -> tuple[str, str] | None:
        try:
            found = conn.storageVolLookupByPath(path)
            return found.storagePoolLookupByVolume().name(), found.name()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
                return None
            raise

    return locate


def supported_pool_types(conn: libvirt.virConnect) -> list[str]:
    return [capability.type for capability in pool_capabilities(conn.getStoragePoolCapabilities(0))]


def pool_capabilities(xml: str) -> list[PoolCapability]:
    """Each pool type libvirt supports (sorted by name), from virConnectGetStoragePoolCapabilities'
    XML: the volume formats it lists for the type (none for types whose volumes take no format)
    and the volume operations this worker can run there (worker/virt/pool_types.py)."""
    found = []
    for pool in parse(xml).findall("pool"):
        if pool.get("supported") != "yes":
            continue
        kind = pool.get("type") or ""
        formats = [value.text for value in pool.findall("volOptions/enum[@name='targetFormatType']/value")
                   if value.text]
        found.append(PoolCapability(type=kind, volume_formats=formats, operations=pool_types.operations(kind)))
    return sorted(found, key=lambda capability: capability.type)


def libvirt_version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def pool_type(pool: libvirt.virStoragePool) -> str:
    return parse(pool.XMLDesc(0)).get("type") or ""
