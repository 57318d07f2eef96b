"""The contract's pool and volume objects, read from libvirt handles, and the pool capabilities of
host.info."""

from __future__ import annotations

from collections.abc import Callable

import libvirt

from messages.objects import PoolObject, PoolState, VolumeObject
from messages.payloads import PoolCapability
from worker.virt import pool_types, volume_xml
from worker.virt.backing import BackingResolver
from worker.virt.sizes import reported_size
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
    capacity, allocation, available = reported_size(capacity), reported_size(allocation), reported_size(available)
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


def volume_object(pool_name: str, volume: libvirt.virStorageVol, resolver: BackingResolver | None = None, *,
                  chain: bool = False, users: Callable[[VolumeObject], list[str]] | None = None) -> VolumeObject:
    """The volume as it is now; `resolver` names backing stores (one per command, shared by the
    volumes it describes); `chain`: with its whole backing chain; `users`: with `in_use_by`."""
    return described_volume(pool_name, volume.XMLDesc(0), resolver or BackingResolver(volume.connect()),
                            chain=chain, users=users)


def described_volume(pool_name: str, xml: str, resolver: BackingResolver, *, chain: bool = False,
                     users: Callable[[VolumeObject], list[str]] | None = None) -> VolumeObject:
    """The volume object of a volume's XML, its backing store named by pool and volume where it is
    one (a round trip only for a volume that has a backing store); with `chain`, every link of its
    backing chain too (`backing_chain`); with `users`, the domains that use it (`in_use_by`)."""
    volume, path, fmt = volume_xml.read_backed(pool_name, xml)
    update: dict = {}
    if chain:
        links = resolver.chain(path, fmt)
        update.update(backing=links[0] if links else None, backing_chain=links)
    elif path is not None:
        update["backing"] = resolver.direct(path, fmt)
    if users is not None:
        update["in_use_by"] = users(volume)
    return volume.model_copy(update=update) if update else volume


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


def physical_length(vol: libvirt.virStorageVol, fallback: int) -> int:
    """The bytes a volume's storage holds (its file's length), which is what a stream moves."""
    try:
        return vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            return fallback
        raise
