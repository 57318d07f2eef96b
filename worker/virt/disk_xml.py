"""Guest disk XML: built for volume.attach, and the disks of a domain's XML read back.

A disk made by the worker names its storage by pool and volume, never by host path
(`<disk type='volume'><source pool='P' volume='V'/>`, libvirt's storage-volume disks): libvirt
resolves the path itself, and the definition keeps saying which volume the guest uses.

Reading accepts every disk libvirt may hold (file, block, network, volume, an empty cdrom), so that
a target already taken by something the worker did not make is reported as what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from worker.virt.xml import child, parse, to_string

# The bus a target name implies, longest prefix first (xvd before vd).
_BUS_BY_PREFIX = (("xvd", "xen"), ("vd", "virtio"), ("sd", "scsi"), ("hd", "ide"))

# Volume formats qemu opens under their own name; everything else (a partition, an LVM volume, an
# iso image, a format libvirt reports as "none") is read by qemu as raw bytes.
_QEMU_FORMATS = frozenset({"raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vdi", "bochs", "cloop", "dmg",
                           "parallels"})
DEFAULT_DRIVER_TYPE = "raw"


def default_bus(target: str) -> str:
    """The bus the target's prefix implies: vd -> virtio, sd -> scsi, hd -> ide, xvd -> xen."""
    for prefix, bus in _BUS_BY_PREFIX:
        if target.startswith(prefix):
            return bus
    raise ValueError(f"target {target!r} has no known prefix (vd, sd, hd, xvd)")


def driver_type(volume_format: str | None) -> str:
    """The qemu driver type for a volume of this format: the format itself, or raw."""
    return volume_format if volume_format in _QEMU_FORMATS else DEFAULT_DRIVER_TYPE


def build(*, pool: str, volume: str, target: str, bus: str, driver: str, readonly: bool = False) -> str:
    """<disk type='volume' device='disk'> naming the storage by pool and volume."""
    disk = etree.Element("disk", type="volume", device="disk")
    child(disk, "driver", name="qemu", type=driver)
    child(disk, "source", pool=pool, volume=volume)
    child(disk, "target", dev=target, bus=bus)
    if readonly:
        child(disk, "readonly")
    return to_string(disk)


@dataclass(frozen=True)
class Disk:
    """One <disk> of a domain, as libvirt reports it."""

    target: str
    bus: str | None
    device: str  # disk, cdrom, floppy, lun
    type: str  # volume, file, block, network, dir, nvme, vhostuser...
    pool: str | None  # type='volume'
    volume: str | None  # type='volume'
    path: str | None  # file= / dev= / dir= of the source; protocol:name of a network disk
    readonly: bool
    alias: str | None  # only in a running domain's XML
    xml: str  # the <disk> element, to hand back to libvirt (detach)
    # Paths of the links of the disk's backing chain, top first; libvirt lists them in a running
    # domain's XML only.
    backing: tuple[str, ...] = ()

    def holds(self, pool: str, volume: str, path: str | None) -> bool:
        """True when this disk's storage is that volume: by pool and volume name, or by its path
        (a disk someone attached by path with virsh uses the volume all the same)."""
        if self.type == "volume":
            return self.pool == pool and self.volume == volume
        return self.type in ("file", "block") and path is not None and self.path == path

    def describe(self) -> str:
        """What the disk holds, for a person: "volume 'a.qcow2' of pool 'images'", "file '/x.img'"..."""
        if self.type == "volume":
            what = f"volume {self.volume!r} of pool {self.pool!r}"
        elif self.type == "network":
            what = f"network storage {self.path!r}" if self.path else "network storage"
        elif self.path is not None:
            what = f"{_PATH_KINDS.get(self.type, self.type)} {self.path!r}"
        else:
            what = "no medium"
        return what if self.device == "disk" else f"a {self.device} with {what}"


_PATH_KINDS = {"file": "file", "block": "block device", "dir": "directory"}


def disks(domain_xml: str) -> list[Disk]:
    """Every <disk> under <devices>, in document order."""
    return [_read(element) for element in parse(domain_xml).findall("devices/disk")]


def find(domain_xml: str, target: str) -> Disk | None:
    """The disk whose target dev is `target`, if the domain has one."""
    return next((d for d in disks(domain_xml) if d.target == target), None)


def find_holding(domain_xml: str, pool: str, volume: str, path: str | None) -> list[Disk]:
    """The disks whose storage is that volume (named by pool/volume, or by its path)."""
    return [d for d in disks(domain_xml) if d.holds(pool, volume, path)]


def _read(element: etree._Element) -> Disk:
    source = element.find("source")
    target = element.find("target")
    alias = element.find("alias")
    kind = element.get("type") or "file"
    path = pool = volume = None
    if source is not None:
        if kind == "volume":
            pool, volume = source.get("pool"), source.get("volume")
        elif kind == "network":
            protocol, name = source.get("protocol"), source.get("name")
            path = f"{protocol}:{name}" if protocol and name else (protocol or name)
        else:
            path = source.get("file") or source.get("dev") or source.get("dir")
    return Disk(
        target=target.get("dev", "") if target is not None else "",
        bus=target.get("bus") if target is not None else None,
        device=element.get("device") or "disk",
        type=kind,
        pool=pool,
        volume=volume,
        path=path,
        readonly=element.find("readonly") is not None,
        alias=alias.get("name") if alias is not None else None,
        xml=etree.tostring(element, encoding="unicode", with_tail=False),
        backing=tuple(_chain(element)),
    )


def _chain(element: etree._Element) -> list[str]:
    """The file or device paths of the nested <backingStore> elements under a disk."""
    paths = []
    link = element.find("backingStore")
    while link is not None:
        source = link.find("source")
        path = None if source is None else source.get("file") or source.get("dev")
        if path:
            paths.append(path)
        link = link.find("backingStore")
    return paths
