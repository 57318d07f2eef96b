"""Real (TCG) domains of the real libvirtd for integration tests, and a directory qemu can reach.

    guest_root -> Path
        A directory under /var/lib/libvirt/images: qemu runs as libvirt-qemu and must reach the image
        files of a running domain, which pytest's 0700 temporary directories do not allow (defining
        a domain never opens them, starting it does). Removed afterwards.
    domains -> Domains
        domains.define(name, disks=[...]) defines a domain of type qemu (TCG) without OS, with ACPI
        (live attach needs it) and the given <disk> elements; domains.start(name) starts it (the
        firmware finds nothing to boot and waits). Every domain made is destroyed and undefined
        afterwards, on a connection of its own (the test's may have died with libvirtd), waiting
        for libvirtd when it is being restarted.

Use them by importing the fixtures: `from tests.integration.domains import domains, guest_root  # noqa: F401`.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.integration.storage_devices import _open_patiently

IMAGES = Path("/var/lib/libvirt/images")
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE


@pytest.fixture
def guest_root() -> Iterator[Path]:
    if not IMAGES.is_dir():
        pytest.fail(f"{IMAGES} is missing: libvirt-daemon-system creates it (scripts/lib/bootstrap.sh)")
    root = IMAGES / f"storage-worker-test-{uuid.uuid4().hex[:10]}"
    root.mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def domain_xml(name: str, disks: list[str] = ()) -> str:
    root = etree.fromstring(f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>""")
    devices = root.find("devices")
    for disk in disks:
        devices.insert(0, etree.fromstring(disk))
    return etree.tostring(root, encoding="unicode")


def volume_disk(pool: str, volume: str, target: str, driver: str = "raw") -> str:
    """A <disk type='volume'> naming a pool's volume."""
    disk = etree.Element("disk", type="volume", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type=driver)
    etree.SubElement(disk, "source", pool=pool, volume=volume)
    etree.SubElement(disk, "target", dev=target, bus="virtio")
    return etree.tostring(disk, encoding="unicode")


def file_disk(path: str, target: str, driver: str = "raw") -> str:
    """A <disk type='file'> naming an image by path, as virsh attach-disk makes it."""
    disk = etree.Element("disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type=driver)
    etree.SubElement(disk, "source", file=path)
    etree.SubElement(disk, "target", dev=target, bus="virtio")
    return etree.tostring(disk, encoding="unicode")


class Domains:
    def __init__(self, conn: libvirt.virConnect):
        self._conn = conn
        self.names: list[str] = []

    def define(self, name: str, disks: list[str] = ()) -> libvirt.virDomain:
        self.names.append(name)
        return self._conn.defineXML(domain_xml(name, disks))

    def start(self, name: str) -> libvirt.virDomain:
        dom = self._conn.lookupByName(name)
        dom.create()
        return dom

    def xml(self, name: str) -> tuple[str, str]:
        """(live XML or "" when not running, persistent XML) of a domain."""
        dom = self._conn.lookupByName(name)
        return (dom.XMLDesc(0) if dom.isActive() else ""), dom.XMLDesc(INACTIVE)

    def remove_all(self) -> None:
        conn = _open_patiently()  # other developers' tools restart the shared daemon
        try:
            for name in self.names:
                try:
                    dom = conn.lookupByName(name)
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        finally:
            conn.close()


@pytest.fixture
def domains(libvirt_conn) -> Iterator[Domains]:
    made = Domains(libvirt_conn)
    yield made
    made.remove_all()
