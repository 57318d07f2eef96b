"""worker.handlers.untrusted.judge and worker.state.volume_records: what makes an uploaded image
unsafe to attach, and the declared formats kept for it."""

from __future__ import annotations

from worker.handlers.untrusted import Before, judge
from worker.state.volume_records import VolumeRecords
from worker.virt.image_header import ImageHeader

PATH = "/pool/disk"


def was(declared: str | None) -> Before:
    return Before(name="disk", declared=declared, capacity=1, backing_path=None, backing_format=None)


def test_the_declared_format_is_what_qemu_would_use():
    assert judge(was("raw"), ImageHeader("raw"), {"format": "raw"}, PATH) == []
    assert judge(was("iso"), ImageHeader("raw"), {"format": "raw"}, PATH) == [], "qemu reads an iso as raw"
    assert judge(was(None), ImageHeader("raw"), None, PATH) == []
    assert judge(was("qcow2"), ImageHeader("qcow2"), {"format": "qcow2"}, PATH) == []
    assert judge(was("raw"), ImageHeader("qcow2"), {"format": "qcow2"}, PATH) == [
        "its first bytes are a qcow2 image header, but the volume's declared format is 'raw'"]
    assert judge(was("raw"), ImageHeader("raw"), {"format": "dmg"}, PATH) == [
        "qemu-img reads it as a dmg image, but the volume's declared format is 'raw'"]


def test_references_to_other_files_are_named():
    assert judge(was("qcow2"), ImageHeader("qcow2", backing="/etc/shadow"), None, PATH) == [
        "it names the backing file '/etc/shadow'"]
    qemu = {"format": "qcow2", "format-specific": {"data": {"data-file": "/dev/sda"}}}
    assert judge(was("qcow2"), ImageHeader("qcow2", data_file=True), qemu, PATH) == [
        "it keeps its data in an external data file '/dev/sda'"]
    vmdk = {"format": "vmdk", "format-specific": {"data": {"extents": [{"filename": PATH},
                                                                        {"filename": "/dev/sdb"}]}}}
    assert judge(was("vmdk"), ImageHeader("vmdk"), vmdk, PATH) == ["it names other files as its extents: '/dev/sdb'"]
    assert judge(was("qcow2"), ImageHeader("qcow2"), "Could not open: bad header", PATH) == [
        "qemu-img cannot open it: Could not open: bad header"]


def test_declared_formats_and_unfinished_copies_are_kept():
    records = VolumeRecords(":memory:")
    assert records.declared("/pool/a") is None
    records.declare("/pool/a", "raw")
    records.declare("/pool/a", "qcow2")
    assert records.declared("/pool/a") == "qcow2"
    records.copy_started("images", "b", "cmd-1")
    assert records.unfinished_copy("images", "b") == "cmd-1" and records.unfinished_copy("images", "c") is None
    records.copy_ended("images", "b")
    assert records.unfinished_copy("images", "b") is None
    records.forget("/pool/a")
    assert records.declared("/pool/a") is None
    records.close()
