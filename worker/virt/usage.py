"""Who uses a volume: the domains whose disks name it, and the volumes built on it.

A domain uses a volume when a disk of its persistent definition or of its running state names it
— by pool and volume (`<disk type='volume'>`) or by path (file and block disks) — or when the
volume is a link of the backing chain of a running domain's disk (libvirt lists the chain in the
live XML only). A volume is built on another when the other is in its backing chain.

Reading every domain's XML is one round trip per domain and per part (live, persistent), so a
command scans the domains once (`DomainScan`) and asks that one scan about every volume it
describes: volume.list of 10 000 volumes costs one scan, not 10 000. Finding the volumes built on
one needs the backing store of every volume of every running pool that can hold one (`dependants`:
not disk, iscsi, scsi or mpath pools, whose volumes never have a backing store), taken from the
worker's view of the volumes where it has one: done only before an operation that would destroy or
overwrite the volume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import libvirt

from messages.objects import BackingStore, VolumeObject
from worker.virt import disk_xml, volume_xml
from worker.virt.describe import pool_type

log = logging.getLogger(__name__)

_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL)
# Pool types whose volumes are partitions, LUNs or multipath devices: none has a backing store, so
# their volumes are not read when looking for volumes built on another.
_NO_BACKING_POOLS = frozenset({"disk", "iscsi", "iscsi-direct", "scsi", "mpath"})


@dataclass(frozen=True)
class VolumeName:
    pool: str
    name: str
    path: str

    def __str__(self) -> str:
        return f"volume {self.name!r} of pool {self.pool!r}"


@dataclass(frozen=True)
class DomainUse:
    """One domain's use of a volume. `live`: the running guest has it (a disk or a link of a disk's
    chain); `config`: the persistent definition names it; `running`: the domain runs (with the
    volume or not); `via`: the volume built on it through which the domain uses it, None when it
    uses it itself."""

    domain: str
    live: bool
    config: bool
    running: bool
    via: VolumeName | None = None

    def describe(self) -> str:
        what = "it" if self.via is None else f"{self.via}, which is built on it,"
        if self.live:
            return f"domain {self.domain!r} is running with {what}".rstrip(",")
        state = "running, but not with it" if self.running else "not running"
        return f"domain {self.domain!r} ({state}) has {what} in its definition"


@dataclass(frozen=True)
class _Domain:
    name: str
    running: bool
    live: tuple[disk_xml.Disk, ...]
    config: tuple[disk_xml.Disk, ...]


class DomainScan:
    """Every domain's disks, read once: its running state's and its persistent definition's."""

    def __init__(self, domains: Iterable[_Domain]):
        self._domains = list(domains)

    @classmethod
    def read(cls, conn: libvirt.virConnect) -> "DomainScan":
        domains = []
        groups = ((libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE | libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT, True, True),
                  (libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE | libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT, True, False),
                  (libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE, False, True))
        for flags, live, config in groups:
            for dom in conn.listAllDomains(flags):
                try:
                    domains.append(_Domain(
                        name=dom.name(),
                        running=live,
                        live=tuple(disk_xml.disks(dom.XMLDesc(0))) if live else (),
                        config=tuple(disk_xml.disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))) if config else ()))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in _GONE:
                        raise
        return cls(domains)

    def users(self, pool: str, name: str, path: str | None, via: VolumeName | None = None) -> list[DomainUse]:
        """The domains that use the volume, by name."""
        found = []
        for domain in self._domains:
            live = any(d.holds(pool, name, path) or (path is not None and path in d.backing) for d in domain.live)
            config = any(d.holds(pool, name, path) for d in domain.config)
            if live or config:
                found.append(DomainUse(domain=domain.name, live=live, config=config, running=domain.running,
                                       via=via))
        return sorted(found, key=lambda use: use.domain)


    def live_targets(self, pool: str, name: str, path: str | None) -> list[tuple[str, str]]:
        """(domain, target) of every running domain's disk that is the volume itself (not a link of
        its backing chain)."""
        return [(domain.name, disk.target) for domain in self._domains for disk in domain.live
                if disk.holds(pool, name, path)]


def dependants(conn: libvirt.virConnect, path: str,
               known: Callable[[str], dict[str, VolumeObject] | None] | None = None) -> list[VolumeName]:
    """The volumes of the running pools whose backing chain holds the volume at `path`: those whose
    backing store it is, then those built on them, and so on (each once).

    `known(pool)` is the worker's view of a pool's volumes (worker/state/inventory.py), None for a
    pool it has not listed. A volume libvirt lists and the view holds is taken from the view; only
    the others are read from libvirt. Reading a volume's XML makes libvirtd open its file (about
    2 ms each on a busy disk, 20 s for a pool of 10 000), while a backing store is set when a volume
    is made and the view learns every new volume, from the worker's commands and its re-listings,
    with its backing store. What the view cannot know: a backing store changed by hand since
    (qemu-img rebase) under a volume it holds."""
    built_on: dict[str, list[VolumeName]] = {}
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            pool_name = pool.name()
            if pool_type(pool) in _NO_BACKING_POOLS:
                continue
            held = (known(pool_name) if known is not None else None) or {}
            for name in pool.listVolumes():
                volume = held.get(name) or _read(pool, pool_name, name)
                if volume is not None and volume.backing is not None:
                    built_on.setdefault(volume.backing.path, []).append(VolumeName(pool_name, name, volume.path))
        except libvirt.libvirtError as exc:
            # A pool stopped or undefined since the listing holds no volume a guest could use.
            if exc.get_error_code() not in _GONE and exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise
            log.info("pool gone while looking for volumes built on a volume", extra={"error": str(exc)})
    found: list[VolumeName] = []
    todo = [path]
    while todo:
        for volume in built_on.pop(todo.pop(0), []):
            found.append(volume)
            todo.append(volume.path)
    return found


def _read(pool: libvirt.virStoragePool, pool_name: str, name: str) -> VolumeObject | None:
    """A volume as its XML describes it (its backing store by path only), None when it is gone."""
    try:
        xml = pool.storageVolLookupByName(name).XMLDesc(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _GONE:
            raise
        return None
    volume, path, fmt = volume_xml.read_backed(pool_name, xml)
    if path is None:
        return volume
    return volume.model_copy(update={"backing": BackingStore(pool=None, name=None, path=path, format=fmt)})
