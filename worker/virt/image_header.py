"""What the first bytes of an image say it is, read without any program opening the image.

qemu (and libvirt's probing) recognise an image format by magic bytes at its start. Some formats
name other files that qemu opens together with the image: a backing file (qcow, qcow2, qed, vmdk),
an external data file (qcow2), the extents of a vmdk descriptor. An image that arrives from outside
(volume.upload) is looked at here first, so that such a reference is found before qemu-img — or a
guest — ever follows it.

`inspect(header)` takes the first HEADER_BYTES of the image (fewer when it is shorter) and returns
the format qemu would probe (its driver name; "raw" when no magic matches) and the references
found. Byte layouts: qemu's docs/interop/qcow2.txt, block/qcow.c, block/qed.h, block/vdi.c,
block/vpc.c, block/vhdx.h, block/bochs.c, block/cloop.c, block/parallels.c and the VMDK 1.1
specification.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

HEADER_BYTES = 1024 * 1024

QCOW2_INCOMPAT_DATA_FILE = 1 << 2  # qcow2 v3 incompatible feature bit 2: external data file
QED_F_BACKING_FILE = 1  # qed feature bit 0


@dataclass(frozen=True)
class ImageHeader:
    format: str
    backing: str | None = None  # the backing file the header names
    data_file: bool = False  # qcow2: the guest's data lives in another file
    references: tuple[str, ...] = field(default=())  # other files named (vmdk descriptor extents)


def inspect(header: bytes) -> ImageHeader:
    for probe in (_qcow, _qed, _vmdk):
        found = probe(header)
        if found is not None:
            return found
    for name, offset, magic in _MAGICS:
        if header[offset:offset + len(magic)] == magic:
            return ImageHeader(format=name)
    return ImageHeader(format="raw")


# Formats recognised by magic alone: (qemu driver, offset, bytes).
_MAGICS = (
    ("vdi", 0x40, struct.pack("<I", 0xBEDA107F)),
    ("vpc", 0, b"conectix"),
    ("vhdx", 0, b"vhdxfile"),
    ("luks", 0, b"LUKS\xba\xbe"),
    ("bochs", 0, b"Bochs Virtual HD Image"),
    ("cloop", 0, b"#!/bin/sh\n#V2.0 Format"),
    ("parallels", 0, b"WithoutFreeSpace"),
    ("parallels", 0, b"WithouFreSpacExt"),
)


def _text_at(header: bytes, offset: int, size: int) -> str:
    if offset <= 0 or size <= 0:
        return ""
    if offset + size > len(header):
        return f"<a name of {size} bytes at offset {offset}, past the first {len(header)} bytes>"
    return header[offset:offset + size].decode("utf-8", "replace")


def _qcow(header: bytes) -> ImageHeader | None:
    """qcow (version 1) and qcow2 (versions 2 and 3): big-endian header; backing file name offset
    (u64 at 8) and length (u32 at 16) in both; qcow2 v3 has incompatible features at 72."""
    if header[:4] != b"QFI\xfb" or len(header) < 20:
        return None
    version, backing_offset, backing_size = struct.unpack_from(">IQI", header, 4)
    backing = _text_at(header, backing_offset, backing_size) or None
    if version == 1:
        return ImageHeader(format="qcow", backing=backing)
    data_file = False
    if version >= 3 and len(header) >= 80:
        (incompatible,) = struct.unpack_from(">Q", header, 72)
        data_file = bool(incompatible & QCOW2_INCOMPAT_DATA_FILE)
    return ImageHeader(format="qcow2", backing=backing, data_file=data_file)


def _qed(header: bytes) -> ImageHeader | None:
    """qed: little-endian; features u64 at 16, backing name offset u32 at 56 and length u32 at 60."""
    if header[:4] != b"QED\x00" or len(header) < 64:
        return None
    (features,) = struct.unpack_from("<Q", header, 16)
    offset, size = struct.unpack_from("<II", header, 56)
    backing = (_text_at(header, offset, size) or "<unreadable>") if features & QED_F_BACKING_FILE else None
    return ImageHeader(format="qed", backing=backing)


_PARENT = re.compile(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"', re.MULTILINE)
_EXTENT = re.compile(r'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)(?:\s+"([^"]*)")?', re.MULTILINE)


def _vmdk(header: bytes) -> ImageHeader | None:
    """vmdk: a sparse extent ("KDMV", an embedded descriptor at the sector u64 at 28, size in
    sectors u64 at 36) or a bare text descriptor, whose extents are all other files."""
    if header[:4] == b"KDMV" and len(header) >= 44:
        sector, sectors = struct.unpack_from("<QQ", header, 28)
        descriptor = header[sector * 512:(sector + sectors) * 512] if sector else b""
        bare = False
    elif header.lstrip()[:21] == b"# Disk DescriptorFile":
        descriptor, bare = header, True
    else:
        return None
    text = descriptor.split(b"\x00", 1)[0].decode("utf-8", "replace")
    parent = _PARENT.search(text)
    extents = [name for kind, name in _EXTENT.findall(text) if kind.upper() not in ("ZERO",) and name]
    # An embedded descriptor names its own file as the single sparse extent; a bare descriptor's
    # extents are always other files.
    references = tuple(extents) if bare or len(extents) > 1 else ()
    return ImageHeader(format="vmdk", backing=parent.group(1) if parent else None, references=references)
