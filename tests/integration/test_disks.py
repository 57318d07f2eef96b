"""volume.attach / volume.detach on a real (TCG) domain of the real libvirtd.

The domain has no disk and no OS. Its volumes live under /var/lib/libvirt/images: qemu runs as
libvirt-qemu and must reach the image file to open it, which pytest's 0700 temporary directories do
not allow (a config attach never opens the file, a live one does).

Without a guest OS a live detach of a virtio disk never completes (the guest must answer the ACPI
eject): the test shortens the wait and checks the honest failure. A USB disk is removed by qemu
without the guest, which checks the successful path of a live detach.
"""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from tests.conftest import LIBVIRT_URI
from tests.integration.domains import domain_xml, guest_root  # noqa: F401 (a fixture)
from tests.integration.conftest import error_of, ok
from worker.handlers import disks
from worker.virt import disk_xml

pytestmark = pytest.mark.integration

MiB = 2**20
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE


@pytest.fixture
def harness(guest_root, make_worker):
    return make_worker(allowed_roots=[str(guest_root)])


@pytest.fixture
def pool(harness, client, guest_root) -> str:
    name = harness.name("pool")
    ok(client.call("pool.define", {"name": name, "type": "dir", "target": {"path": str(guest_root / name)},
                                   "build": True, "start": True}))
    return name


@pytest.fixture
def domain(harness, libvirt_conn) -> Iterator[str]:
    """A defined, stopped domain without disks; destroyed and undefined afterwards."""
    name = harness.name("dom")
    libvirt_conn.defineXML(domain_xml(name))
    yield name
    conn = libvirt.open(LIBVIRT_URI)  # its own connection: the test's may have died with libvirtd
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


def disk_at(xml: str, target: str) -> disk_xml.Disk | None:
    return disk_xml.find(xml, target)


def volume(client, pool: str, name: str, fmt: str) -> dict:
    return ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": 16 * MiB, "format": fmt}))


def test_config_attach_converges_conflicts_and_detaches(harness, client, pool, domain, libvirt_conn, tap):
    volume(client, pool, "a.qcow2", "qcow2")
    volume(client, pool, "b.raw", "raw")
    events = tap(harness.settings.topology.events_exchange, f"{harness.host}.volume.*")
    dom = libvirt_conn.lookupByName(domain)

    first = client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.qcow2", "target": "vdb"})
    assert ok(first) == {"domain": domain, "target": "vdb", "pool": pool, "name": "a.qcow2", "changed": True}
    defined = disk_at(dom.XMLDesc(INACTIVE), "vdb")
    assert defined is not None and (defined.type, defined.pool, defined.volume, defined.bus) == \
        ("volume", pool, "a.qcow2", "virtio")
    assert "type='qcow2'" in defined.xml.replace('"', "'") and "<readonly" not in defined.xml
    assert not dom.isActive()

    again = ok(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.qcow2", "target": "vdb"}))
    assert again["changed"] is False

    other = error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "b.raw",
                                                   "target": "vdb"}), "failed", "conflict")
    assert "vdb" in other and "'a.qcow2'" in other and pool in other
    twice = error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.qcow2",
                                                   "target": "vdc"}), "failed", "conflict")
    assert "as vdb" in twice
    readonly = error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.qcow2",
                                                      "target": "vdb", "readonly": True}), "failed", "conflict")
    assert "read-only" in readonly

    attached = [e for e in events.bodies(wait=1.0) if e["type"] == "storage.volume.attached"]
    assert len(attached) == 1, attached
    assert attached[0]["commandid"] == first.id
    assert attached[0]["data"]["disk"] == {"domain": domain, "target": "vdb"}
    assert attached[0]["data"]["pool"] == pool and attached[0]["data"]["volume"]["name"] == "a.qcow2"
    assert attached[0]["data"]["origin"] == "command"

    gone = client.call("volume.detach", {"domain": domain, "target": "vdb"})
    assert ok(gone) == {"domain": domain, "target": "vdb", "pool": pool, "name": "a.qcow2", "changed": True}
    assert disk_at(dom.XMLDesc(INACTIVE), "vdb") is None
    assert ok(client.call("volume.detach", {"domain": domain, "target": "vdb"})) == \
        {"domain": domain, "target": "vdb", "pool": "", "name": "", "changed": False}

    detached = [e for e in events.bodies(wait=1.0) if e["type"] == "storage.volume.detached"]
    assert len(detached) == 1 and detached[0]["commandid"] == gone.id
    assert detached[0]["data"]["disk"] == {"domain": domain, "target": "vdb"}

    raw = ok(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "b.raw", "target": "sdb",
                                           "readonly": True}))
    assert raw["changed"] is True
    held = disk_at(dom.XMLDesc(INACTIVE), "sdb")
    assert held is not None and held.bus == "scsi" and held.readonly
    assert "type='raw'" in held.xml.replace('"', "'")


def test_bad_requests(harness, client, pool, domain):
    volume(client, pool, "a.raw", "raw")
    missing = harness.name("nodom")
    assert missing in error_of(client.call("volume.attach", {"domain": missing, "pool": pool, "name": "a.raw",
                                                             "target": "vdb"}), "failed", "not_found")
    assert missing in error_of(client.call("volume.detach", {"domain": missing, "target": "vdb"}),
                               "failed", "not_found")
    message = error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.raw",
                                                     "target": "vdb", "live": True}), "failed", "invalid")
    assert domain in message and "not running" in message and "live=true" in message
    message = error_of(client.call("volume.detach", {"domain": domain, "target": "vdb", "live": True}),
                       "failed", "invalid")
    assert "not running" in message
    assert "'nope.raw'" in error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "nope.raw",
                                                                  "target": "vdb"}), "failed", "not_found")
    nopool = harness.name("nopool")
    assert nopool in error_of(client.call("volume.attach", {"domain": domain, "pool": nopool, "name": "a.raw",
                                                            "target": "vdb"}), "failed", "not_found")
    nothing = error_of(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "a.raw",
                                                     "target": "vdb", "config": False}), "failed", "invalid")
    assert "nothing to attach" in nothing


def test_live_attach_and_detach_on_a_running_domain(harness, client, pool, domain, libvirt_conn, monkeypatch):
    monkeypatch.setattr(disks, "LIVE_DETACH_TIMEOUT", 2.0)
    # No polling within the 2 s: a wait ends only by libvirt's device-removed event (or the timeout).
    monkeypatch.setattr(disks, "LIVE_DETACH_POLL", 60.0)
    volume(client, pool, "live.qcow2", "qcow2")
    volume(client, pool, "usb.raw", "raw")
    dom = libvirt_conn.lookupByName(domain)
    dom.create()  # TCG, no disk, no OS: the firmware finds nothing to boot and waits
    assert dom.isActive()

    made = ok(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "live.qcow2", "target": "vdb"}))
    assert made["changed"] is True
    running = disk_at(dom.XMLDesc(0), "vdb")
    assert running is not None and (running.pool, running.volume) == (pool, "live.qcow2") and running.alias
    assert disk_at(dom.XMLDesc(INACTIVE), "vdb") is not None, "config defaults to true"
    assert ok(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "live.qcow2",
                                            "target": "vdb"}))["changed"] is False

    # virtio over PCI: the guest must answer the ACPI eject, and there is no guest.
    message = error_of(client.call("volume.detach", {"domain": domain, "target": "vdb"}), "failed", "timeout")
    assert "vdb" in message and "2 s" in message and "pending" in message
    assert "removed from the domain's persistent definition" in message
    assert disk_at(dom.XMLDesc(0), "vdb") is not None, "the running domain keeps the disk"
    assert disk_at(dom.XMLDesc(INACTIVE), "vdb") is None

    # USB: qemu unplugs it without asking the guest, so libvirt's device-removed event comes.
    ok(client.call("volume.attach", {"domain": domain, "pool": pool, "name": "usb.raw", "target": "sdb",
                                     "bus": "usb", "config": False}))
    assert disk_at(dom.XMLDesc(0), "sdb") is not None and disk_at(dom.XMLDesc(INACTIVE), "sdb") is None
    gone = ok(client.call("volume.detach", {"domain": domain, "target": "sdb"}))
    assert gone == {"domain": domain, "target": "sdb", "pool": pool, "name": "usb.raw", "changed": True}
    assert disk_at(dom.XMLDesc(0), "sdb") is None
