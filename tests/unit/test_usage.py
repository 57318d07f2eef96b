"""worker.virt.usage and worker.handlers.in_use: which domains use a volume, read from domain XML as
libvirt 9.0 writes it, and how a refusal names them."""

from __future__ import annotations

from worker.handlers.in_use import _users
from worker.virt import disk_xml
from worker.virt.usage import DomainScan, DomainUse, VolumeName, _Domain

# The disks of a running domain's live XML (libvirt 9.0, qemu): a volume disk whose qcow2 overlay
# has a raw backing file, and a file disk.
LIVE = """<domain type='qemu'><name>vm</name><devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='images' volume='ov.qcow2' index='2'/>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/images/base.raw'/>
        <backingStore/>
      </backingStore>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/images/r.raw' index='1'/>
      <backingStore/>
      <target dev='vdc' bus='virtio'/>
      <alias name='virtio-disk2'/>
    </disk>
</devices></domain>"""

CONFIG = """<domain type='qemu'><name>vm</name><devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='images' volume='ov.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/images/next-boot.raw'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
</devices></domain>"""


def scan() -> DomainScan:
    return DomainScan([
        _Domain(name="vm", running=True, live=tuple(disk_xml.disks(LIVE)), config=tuple(disk_xml.disks(CONFIG))),
        _Domain(name="stopped", running=False, live=(),
                config=tuple(disk_xml.disks(CONFIG.replace("next-boot", "r")))),
    ])


def test_the_backing_chain_of_a_live_disk_is_read():
    found = {d.target: d.backing for d in disk_xml.disks(LIVE)}
    assert found == {"vdb": ("/images/base.raw",), "vdc": ()}


def test_a_volume_is_used_by_name_by_path_and_as_a_link_of_a_running_chain():
    domains = scan()
    assert domains.users("images", "ov.qcow2", "/images/ov.qcow2") == [
        DomainUse(domain="stopped", live=False, config=True, running=False),
        DomainUse(domain="vm", live=True, config=True, running=True)]
    assert domains.users("images", "base.raw", "/images/base.raw") == [
        DomainUse(domain="vm", live=True, config=False, running=True)]
    assert domains.users("images", "r.raw", "/images/r.raw") == [
        DomainUse(domain="stopped", live=False, config=True, running=False),
        DomainUse(domain="vm", live=True, config=False, running=True)]
    assert domains.users("images", "next-boot.raw", "/images/next-boot.raw") == [
        DomainUse(domain="vm", live=False, config=True, running=True)]
    assert domains.users("other", "ov.qcow2", "/other/ov.qcow2") == []


def test_only_the_volume_itself_is_grown_through_a_running_domain():
    domains = scan()
    assert domains.live_targets("images", "ov.qcow2", "/images/ov.qcow2") == [("vm", "vdb")]
    assert domains.live_targets("images", "r.raw", "/images/r.raw") == [("vm", "vdc")]
    assert domains.live_targets("images", "base.raw", "/images/base.raw") == [], "a chain link is not the disk"


def test_a_refusal_names_each_domain_once_by_its_closest_use():
    overlay = VolumeName("images", "ov.qcow2", "/images/ov.qcow2")
    uses = [DomainUse(domain="b", live=False, config=True, running=False, via=overlay),
            DomainUse(domain="a", live=True, config=False, running=True, via=overlay),
            DomainUse(domain="a", live=False, config=True, running=True),
            DomainUse(domain="c", live=False, config=True, running=True)]
    assert _users(uses, [overlay]) == (
        "domain 'a' is running with volume 'ov.qcow2' of pool 'images', which is built on it; "
        "domain 'b' (not running) has volume 'ov.qcow2' of pool 'images', which is built on it, in its definition; "
        "domain 'c' (running, but not with it) has it in its definition; "
        "volumes are built on it: volume 'ov.qcow2' of pool 'images'")
