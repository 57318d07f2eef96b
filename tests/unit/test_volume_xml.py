"""worker.virt.volume_xml: volume XML built for libvirt, and libvirt's volume XML read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from messages.objects import BackingStore, VolumeObject
from tests.conftest import require
from worker.virt import volume_xml
from worker.virt.sizes import reported_size

SCHEMA = Path("/usr/share/libvirt/schemas/storagevol.rng")

# vol-dumpxml of a qcow2 overlay in a dir pool (libvirt 9.0), timestamps and all.
OVERLAY = """<volume type='file'>
  <name>child.qcow2</name>
  <key>/var/lib/libvirt/images/child.qcow2</key>
  <capacity unit='bytes'>2147483648</capacity>
  <allocation unit='bytes'>200704</allocation>
  <physical unit='bytes'>196640</physical>
  <target>
    <path>/var/lib/libvirt/images/child.qcow2</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0600</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
    <timestamps>
      <atime>1795678929.110458170</atime>
      <mtime>1795678929.106760099</mtime>
      <ctime>1795678929.110396338</ctime>
      <btime>0</btime>
    </timestamps>
  </target>
  <backingStore>
    <path>/var/lib/libvirt/images/base.qcow2</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0600</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
  </backingStore>
</volume>
"""

# A logical volume: type block, no format element.
LOGICAL = """<volume type='block'>
  <name>lv_data</name>
  <key>Xq3FZg-0lYc-kJ2r-7d3e-Hw9a-Ty1b-Zk4Lm2</key>
  <source>
    <device path='/dev/sdb'>
      <extent start='4194304' end='1077936128'/>
    </device>
  </source>
  <capacity unit='bytes'>1073741824</capacity>
  <allocation unit='bytes'>1073741824</allocation>
  <physical unit='bytes'>1073741824</physical>
  <target>
    <path>/dev/vg0/lv_data</path>
    <permissions>
      <mode>0660</mode>
      <owner>0</owner>
      <group>6</group>
    </permissions>
  </target>
</volume>
"""


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    require(SCHEMA.exists(), f"libvirt's RelaxNG schemas are not installed ({SCHEMA})")
    return etree.RelaxNG(file=str(SCHEMA))


def test_build_minimal(schema):
    xml = volume_xml.build("disk.raw", 10 * 2**30)
    root = etree.fromstring(xml)
    assert root.tag == "volume"
    assert root.findtext("name") == "disk.raw"
    capacity = root.find("capacity")
    assert capacity.get("unit") == "bytes" and capacity.text == str(10 * 2**30)
    assert root.find("allocation") is None
    assert root.find("target/format") is None
    assert root.find("backingStore") is None
    assert schema.validate(root), schema.error_log


def test_build_with_allocation_format_and_backing(schema):
    xml = volume_xml.build("vm1.qcow2", 20 * 2**30, allocation=0, format="qcow2",
                           backing_path="/var/lib/libvirt/images/base.qcow2", backing_format="qcow2")
    root = etree.fromstring(xml)
    assert root.find("allocation").get("unit") == "bytes"
    assert root.findtext("allocation") == "0"
    assert root.findtext("capacity") == "21474836480"
    assert root.find("target/format").get("type") == "qcow2"
    assert root.findtext("backingStore/path") == "/var/lib/libvirt/images/base.qcow2"
    assert root.find("backingStore/format").get("type") == "qcow2"
    assert schema.validate(root), schema.error_log


def test_build_backing_without_format():
    root = etree.fromstring(volume_xml.build("o.qcow2", 1, format="qcow2", backing_path="/srv/b.raw"))
    assert root.findtext("backingStore/path") == "/srv/b.raw"
    assert root.find("backingStore/format") is None


def test_build_escapes_what_it_is_given():
    xml = volume_xml.build("a<b>&c", 1)
    assert "a&lt;b&gt;&amp;c" in xml
    assert etree.fromstring(xml).findtext("name") == "a<b>&c"


def test_build_largest_size():
    root = etree.fromstring(volume_xml.build("big", 2**63 - 1, allocation=2**63 - 1))
    assert int(root.findtext("capacity")) == 2**63 - 1 and int(root.findtext("allocation")) == 2**63 - 1


def test_read_overlay():
    volume, path, fmt = volume_xml.read_backed("images", OVERLAY)
    assert volume == VolumeObject(pool="images", name="child.qcow2", key="/var/lib/libvirt/images/child.qcow2",
                                  path="/var/lib/libvirt/images/child.qcow2", type="file", format="qcow2",
                                  capacity=2147483648, allocation=200704, physical=196640)
    assert (path, fmt) == ("/var/lib/libvirt/images/base.qcow2", "qcow2")
    assert volume.backing is None, "the backing store is named by pool and volume where it is described"


# A LUN of an iscsi-direct pool (libvirt 9.0): no <physical>, no format.
LUN = """<volume type='network'>
  <name>unit:0:0:1</name>
  <key>ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:t1-lun-1</key>
  <capacity unit='bytes'>67108352</capacity>
  <allocation unit='bytes'>67108352</allocation>
  <target>
    <path>ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:t1-lun-1</path>
  </target>
</volume>"""


def test_physical_is_libvirts_physical_element():
    assert volume_xml.read("vg0", LOGICAL).physical == 1073741824
    lun = volume_xml.read("iscsi", LUN)
    assert (lun.type, lun.physical, lun.backing, lun.format, lun.capacity) == ("network", 0, None, None, 67108352)


def test_read_logical_volume():
    volume = volume_xml.read("vg0", LOGICAL)
    assert volume.type == "block"
    assert volume.format is None
    assert volume.path == "/dev/vg0/lv_data"
    assert volume.key == "Xq3FZg-0lYc-kJ2r-7d3e-Hw9a-Ty1b-Zk4Lm2"
    assert (volume.capacity, volume.allocation) == (1073741824, 1073741824)


def test_read_what_build_wrote():
    volume = volume_xml.read("p", volume_xml.build("v.qcow2", 4096, allocation=512, format="qcow2"))
    assert (volume.name, volume.format, volume.capacity, volume.allocation) == ("v.qcow2", "qcow2", 4096, 512)
    assert volume.type == "file" and volume.path == "" and volume.key == ""


def test_backing_of_overlay():
    assert volume_xml.backing_of(OVERLAY) == ("/var/lib/libvirt/images/base.qcow2", "qcow2")


def test_backing_of_volume_without_one():
    assert volume_xml.backing_of(LOGICAL) == (None, None)
    assert volume_xml.backing_of(volume_xml.build("v", 1, format="raw")) == (None, None)


def test_backing_of_what_build_wrote():
    xml = volume_xml.build("o", 1, format="qcow2", backing_path="/srv/base.vmdk", backing_format="vmdk")
    assert volume_xml.backing_of(xml) == ("/srv/base.vmdk", "vmdk")


def test_read_resolves_no_external_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xml = (f'<?xml version="1.0"?><!DOCTYPE volume [<!ENTITY x SYSTEM "file://{secret}">]>'
           "<volume><name>&x;</name><capacity unit='bytes'>1</capacity></volume>")
    volume = volume_xml.read("p", xml)
    assert "TOP-SECRET" not in volume.name


def test_a_size_libvirt_wrapped_below_zero_reads_as_zero():
    """Found by the live fuzz test: a dir pool on a tmpfs filled past its limit reported an
    allocation of 2**64 - 63832064; describing the pool failed validation, and every pool.info,
    pool.list, pool.stop ... of that host ended `internal`."""
    assert reported_size(18446744073645719552) == 0 and reported_size(-1) == 0
    assert reported_size(2**63 - 1) == 2**63 - 1 and reported_size(0) == 0
    xml = OVERLAY.replace("<allocation unit='bytes'>200704</allocation>",
                          "<allocation unit='bytes'>18446744073645719552</allocation>")
    assert volume_xml.read("images", xml).allocation == 0
