"""Storage volume XML: built for volume.create/clone and read into the contract's volume object."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from messages.objects import VolumeBacking, VolumeObject
from worker.virt.xml import attr_of, child, int_of, parse, text_of, to_string

# Finds the pool and the name of the volume at a path; None when it is no pool's volume.
Locate = Callable[[str], "tuple[str, str] | None"]


def build(name: str, capacity: int, *, allocation: int | None = None, format: str | None = None,
          backing_path: str | None = None, backing_format: str | None = None) -> str:
    root = etree.Element("volume")
    child(root, "name", name)
    child(root, "capacity", capacity, unit="bytes")
    if allocation is not None:
        child(root, "allocation", allocation, unit="bytes")
    target = child(root, "target")  # required by libvirt's storagevol.rng, even when empty
    if format is not None:
        child(target, "format", type=format)
    if backing_path is not None:
        backing = child(root, "backingStore")
        child(backing, "path", backing_path)
        if backing_format is not None:
            child(backing, "format", type=backing_format)
    return to_string(root)


def read(pool: str, xml: str, locate: Locate | None = None) -> VolumeObject:
    """The volume object. `physical` is libvirt's <physical> (what VIR_STORAGE_VOL_GET_PHYSICAL
    reports: a file's length, a partition's size; 0 where libvirt has none, as for network volumes).
    The backing store's pool and name come from `locate`; without it they are null."""
    root = parse(xml)
    backing = None
    backing_path = text_of(root, "backingStore/path")
    if backing_path is not None:
        found = locate(backing_path) if locate is not None else None
        backing = VolumeBacking(pool=found[0] if found else None, name=found[1] if found else None,
                                path=backing_path, format=attr_of(root, "backingStore/format", "type"))
    return VolumeObject(
        pool=pool,
        name=text_of(root, "name") or "",
        key=text_of(root, "key") or "",
        path=text_of(root, "target/path") or "",
        type=root.get("type") or "file",
        format=attr_of(root, "target/format", "type"),
        capacity=int_of(root, "capacity"),
        allocation=int_of(root, "allocation"),
        physical=int_of(root, "physical"),
        backing=backing,
    )


def backing_of(xml: str) -> tuple[str | None, str | None]:
    """The (path, format) of a volume's backing store, if it has one."""
    root = parse(xml)
    return text_of(root, "backingStore/path"), attr_of(root, "backingStore/format", "type")
