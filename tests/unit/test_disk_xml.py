"""worker.virt.disk_xml: disk XML built for volume.attach, and a domain's disks read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import require
from worker.virt import disk_xml

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")

# dumpxml of a running TCG domain (libvirt 9.0), trimmed to its devices, with one disk of each kind.
LIVE = """<domain type='qemu' id='3'>
  <name>guest</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='images' volume='a.qcow2' index='2'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/images/b.raw' index='1'/>
      <backingStore/>
      <target dev='vdc' bus='virtio'/>
      <readonly/>
      <alias name='virtio-disk2'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg0/lv1'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='rbdpool/image'/>
      <target dev='sdb' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
  </devices>
</domain>"""


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    require(SCHEMA.exists(), f"libvirt's RelaxNG schemas are not installed ({SCHEMA})")
    return etree.RelaxNG(file=str(SCHEMA))


def in_domain(disk: str) -> etree._Element:
    domain = etree.fromstring("<domain type='qemu'><name>g</name><memory>65536</memory>"
                              "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
    domain.find("devices").append(etree.fromstring(disk))
    return domain


def test_build_names_pool_and_volume(schema):
    xml = disk_xml.build(pool="images", volume="a.qcow2", target="vdb", bus="virtio", driver="qcow2")
    root = etree.fromstring(xml)
    assert (root.tag, root.get("type"), root.get("device")) == ("disk", "volume", "disk")
    assert root.find("driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert root.find("source").attrib == {"pool": "images", "volume": "a.qcow2"}
    assert root.find("target").attrib == {"dev": "vdb", "bus": "virtio"}
    assert root.find("readonly") is None
    assert schema.validate(in_domain(xml)), schema.error_log


def test_build_readonly_and_awkward_names_are_escaped(schema):
    xml = disk_xml.build(pool="p&<x", volume="v'\"", target="sdc", bus="scsi", driver="raw", readonly=True)
    root = etree.fromstring(xml)
    assert root.find("source").get("pool") == "p&<x" and root.find("source").get("volume") == "v'\""
    assert root.find("readonly") is not None
    assert schema.validate(in_domain(xml)), schema.error_log


@pytest.mark.parametrize("target, bus", [("vdb", "virtio"), ("sda", "scsi"), ("hdc", "ide"), ("xvdb", "xen"),
                                         ("vdaa", "virtio")])
def test_default_bus(target, bus):
    assert disk_xml.default_bus(target) == bus


@pytest.mark.parametrize("fmt, driver", [("qcow2", "qcow2"), ("raw", "raw"), (None, "raw"), ("iso", "raw"),
                                         ("none", "raw"), ("vmdk", "vmdk")])
def test_driver_type(fmt, driver):
    assert disk_xml.driver_type(fmt) == driver


def test_reads_every_kind_of_disk():
    found = {d.target: d for d in disk_xml.disks(LIVE)}
    assert list(found) == ["vdb", "vdc", "sda", "sdb", "hdc"]
    vdb = found["vdb"]
    assert (vdb.type, vdb.pool, vdb.volume, vdb.bus, vdb.alias, vdb.readonly) == \
        ("volume", "images", "a.qcow2", "virtio", "virtio-disk1", False)
    assert vdb.describe() == "volume 'a.qcow2' of pool 'images'"
    assert etree.fromstring(vdb.xml).tag == "disk" and not vdb.xml.endswith("\n")
    assert found["vdc"].path == "/var/lib/libvirt/images/images/b.raw" and found["vdc"].readonly
    assert found["vdc"].describe() == "file '/var/lib/libvirt/images/images/b.raw'"
    assert found["sda"].describe() == "block device '/dev/vg0/lv1'"
    assert found["sdb"].describe() == "network storage 'rbd:rbdpool/image'"
    assert found["hdc"].describe() == "a cdrom with no medium"


def test_find_and_holding():
    assert disk_xml.find(LIVE, "vdb").volume == "a.qcow2"
    assert disk_xml.find(LIVE, "vdz") is None
    assert [d.target for d in disk_xml.find_holding(LIVE, "images", "a.qcow2", "/elsewhere")] == ["vdb"]
    # A disk attached by path holds the volume that has that path.
    assert [d.target for d in disk_xml.find_holding(LIVE, "images", "b.raw",
                                                    "/var/lib/libvirt/images/images/b.raw")] == ["vdc"]
    assert disk_xml.find_holding(LIVE, "images", "b.raw", None) == []
    assert disk_xml.find_holding("<domain><devices/></domain>", "images", "a.qcow2", None) == []
