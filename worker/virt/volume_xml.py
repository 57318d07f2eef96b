"""Storage volume XML: built for volume.create/clone and read into the contract's volume object."""

from __future__ import annotations

from lxml import etree

from messages.objects import VolumeObject
from worker.virt.sizes import reported_size
from worker.virt.xml import attr_of, child, int_of, parse, text_of, to_string


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


def read(pool: str, xml: str) -> VolumeObject:
    return _volume(pool, parse(xml))


def read_backed(pool: str, xml: str) -> tuple[VolumeObject, str | None, str | None]:
    """The volume object and the (path, format) of its backing store, from one parse."""
    root = parse(xml)
    backing = root.find("backingStore")
    if backing is None:  # most volumes: one look instead of two
        return _volume(pool, root), None, None
    return _volume(pool, root), text_of(backing, "path"), attr_of(backing, "format", "type")


def _volume(pool: str, root: etree._Element) -> VolumeObject:
    return VolumeObject(
        pool=pool,
        name=text_of(root, "name") or "",
        key=text_of(root, "key") or "",
        path=text_of(root, "target/path") or "",
        type=root.get("type") or "file",
        format=attr_of(root, "target/format", "type"),
        capacity=reported_size(int_of(root, "capacity")),
        allocation=reported_size(int_of(root, "allocation")),
        physical=reported_size(int_of(root, "physical")),
    )


def backing_of(xml: str) -> tuple[str | None, str | None]:
    """The (path, format) of a volume's backing store, if it has one."""
    root = parse(xml)
    return text_of(root, "backingStore/path"), attr_of(root, "backingStore/format", "type")
