"""worker.virt.image_header: formats and the files they name, from header bytes laid out as qemu's
format specifications describe them (tests/integration/test_untrusted_images.py runs the same on
images qemu-img made)."""

from __future__ import annotations

import struct

from worker.virt.image_header import ImageHeader, inspect


def qcow2(version: int = 3, backing: bytes = b"", incompatible: int = 0) -> bytes:
    header = bytearray(4096)
    offset = 512 if backing else 0
    struct.pack_into(">4sIQI", header, 0, b"QFI\xfb", version, offset, len(backing))
    struct.pack_into(">Q", header, 72, incompatible)
    header[512:512 + len(backing)] = backing
    return bytes(header)


def test_qcow2_without_references_is_self_contained():
    assert inspect(qcow2()) == ImageHeader(format="qcow2")
    assert inspect(qcow2(version=2)) == ImageHeader(format="qcow2")


def test_qcow2_backing_file_and_external_data_file():
    assert inspect(qcow2(backing=b"/etc/shadow")) == ImageHeader(format="qcow2", backing="/etc/shadow")
    assert inspect(qcow2(incompatible=1 << 2)).data_file is True
    assert inspect(qcow2(version=2, incompatible=1 << 2)).data_file is False, "v2 has no feature bits"


def test_a_backing_name_beyond_the_bytes_read_is_still_a_backing_file():
    header = bytearray(qcow2())
    struct.pack_into(">QI", header, 8, 10 * 2**20, 11)
    found = inspect(bytes(header))
    assert found.backing is not None and "past the first" in found.backing


def test_qcow_version_1_and_qed_backing_files():
    header = bytearray(1024)
    struct.pack_into(">4sIQI", header, 0, b"QFI\xfb", 1, 100, 4)
    header[100:104] = b"base"
    assert inspect(bytes(header)) == ImageHeader(format="qcow", backing="base")
    qed = bytearray(1024)
    struct.pack_into("<4sIII", qed, 0, b"QED\x00", 65536, 4, 1)
    struct.pack_into("<Q", qed, 16, 1)
    struct.pack_into("<II", qed, 56, 200, 9)
    qed[200:209] = b"/dev/sda1"
    assert inspect(bytes(qed)) == ImageHeader(format="qed", backing="/dev/sda1")
    struct.pack_into("<Q", qed, 16, 0)
    assert inspect(bytes(qed)) == ImageHeader(format="qed")


def test_vmdk_descriptors_name_their_parent_and_extents():
    bare = b'# Disk DescriptorFile\nversion=1\nparentFileNameHint="/etc/passwd"\nRW 2048 FLAT "/dev/sda" 0\n'
    assert inspect(bare) == ImageHeader(format="vmdk", backing="/etc/passwd", references=("/dev/sda",))
    sparse = bytearray(4096)
    struct.pack_into("<4sI", sparse, 0, b"KDMV", 1)
    struct.pack_into("<QQ", sparse, 28, 1, 2)
    sparse[512:600] = b'# Disk DescriptorFile\nRW 2048 SPARSE "disk.vmdk"\n'.ljust(88, b"\x00")
    assert inspect(bytes(sparse)) == ImageHeader(format="vmdk")


def test_other_formats_by_magic_and_raw_otherwise():
    vdi = bytearray(512)
    struct.pack_into("<I", vdi, 0x40, 0xBEDA107F)
    assert inspect(bytes(vdi)).format == "vdi"
    assert inspect(b"conectix" + bytes(100)).format == "vpc"
    assert inspect(b"vhdxfile" + bytes(100)).format == "vhdx"
    assert inspect(b"LUKS\xba\xbe" + bytes(100)).format == "luks"
    assert inspect(bytes(4096)).format == "raw"
    assert inspect(b"").format == "raw"
    assert inspect(b"QFI").format == "raw", "too short to be a qcow header"
