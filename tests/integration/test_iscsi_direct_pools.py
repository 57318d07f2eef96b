"""iscsi-direct pools through the worker against a real tgtd on 127.0.0.1 (libvirt talks iSCSI from
user space with libiscsi): LUNs as volumes, what the backend cannot do refused before anything is
touched, and a LUN attached to a guest as the iSCSI network disk libvirt makes of it."""

from __future__ import annotations

import json
import os

import libvirt
import pytest
from lxml import etree

from tests.conftest import LIBVIRT_URI, require
from tests.integration.block_helpers import MiB, call, fails, names, sha256, write_file
from tests.integration.storage_devices import iscsi_target, tgt_daemon  # noqa: F401
from tests.integration.test_disks import domain_xml

pytestmark = pytest.mark.integration

INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE


@pytest.fixture
def harness(iscsi_target, make_worker, libvirt_conn):
    """The worker; its pools are removed before the targets are deleted."""
    root = etree.fromstring(libvirt_conn.getStoragePoolCapabilities(0))
    require(root.find("pool[@type='iscsi-direct'][@supported='yes']") is not None,
            "libvirtd has no iscsi-direct storage backend loaded")
    return make_worker()


@pytest.fixture
def domain(harness, libvirt_conn):
    """A defined, stopped domain without disks; undefined afterwards."""
    name = harness.name("dom")
    libvirt_conn.defineXML(domain_xml(name))
    yield name
    conn = libvirt.open(LIBVIRT_URI)
    try:
        conn.lookupByName(name).undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    finally:
        conn.close()


def iscsi_pool(name: str, target, initiator: str | None = None, **extra) -> dict:
    return {"name": name, "type": "iscsi-direct",
            "source": {"host": [{"name": target.host, "port": target.port}], "device": [{"path": target.iqn}],
                       "initiator": {"iqn": initiator or target.initiator_iqn}}, **extra}


def backing_digests(target) -> list[str]:
    return [sha256(path) for path in target.backing]


def test_luns_are_volumes_and_what_the_backend_lacks_is_refused_first(harness, client, iscsi_target, libvirt_conn):
    target = iscsi_target(luns=[64 * MiB, 32 * MiB])
    name = harness.name("iscsi")
    made = call(client, "pool.define", **iscsi_pool(name, target, start=True))
    assert made["state"] == "running" and made["type"] == "iscsi-direct" and made["operations"] == ["wipe", "attach"]
    defined = libvirt_conn.storagePoolLookupByName(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
    source = etree.fromstring(defined).find("source")
    assert source.find("device").get("path") == target.iqn
    assert source.find("initiator/iqn").get("name") == target.initiator_iqn

    listed = call(client, "volume.list", pool=name)["volumes"]
    # LUN 0 is tgt's controller; libvirt reports each LUN one 512-byte block short.
    assert [(v["name"], v["type"], v["capacity"], v["physical"]) for v in listed] == [
        (target.volume_name(0), "network", 0, 0),
        (target.volume_name(1), "network", 64 * MiB - 512, 0),
        (target.volume_name(2), "network", 32 * MiB - 512, 0)]
    lun = call(client, "volume.info", pool=name, name=target.volume_name(1))
    assert lun["path"] == lun["key"] == target.volume_path(1) and lun["format"] is None and lun["backing"] is None

    with open(target.backing[0], "r+b") as handle:
        handle.write(b"\xab" * MiB)
    digests = backing_digests(target)
    upload_source = write_file(harness.root / "data.bin", os.urandom(MiB))
    download_to = harness.root / "lun.bin"
    refused = {
        "create": ("volume.create", {"name": "new", "capacity": MiB}),
        "delete": ("volume.delete", {"name": target.volume_name(1)}),
        "resize": ("volume.resize", {"name": target.volume_name(1), "capacity": 128 * MiB}),
        "upload": ("volume.upload", {"name": target.volume_name(1), "source": {"path": str(upload_source)}}),
        "download": ("volume.download", {"name": target.volume_name(1), "destination": {"path": str(download_to)}}),
        "clone": ("volume.clone", {"source": target.volume_name(1), "name": "copy"}),
    }
    for operation, (op, args) in refused.items():
        message = fails(client, op, "unsupported", pool=name, **args)
        assert message.startswith(f"volume.{operation} is not supported on iscsi-direct pools (pool {name!r}): "), \
            message
        assert message.endswith("Volume operations this worker can run on iscsi-direct pools: wipe, attach")
    message = fails(client, "volume.wipe", "unsupported", pool=name, name=target.volume_name(1), algorithm="random")
    assert "algorithm 'random'" in message and "'zero' only" in message

    # Nothing changed: the LUNs, the listing, and no file where the download would have gone.
    assert backing_digests(target) == digests
    assert names(client, name) == [target.volume_name(n) for n in (0, 1, 2)]
    assert sorted(os.listdir(harness.root)) == ["data.bin"]

    # A LUN cannot be the source of a clone into another pool either: it cannot be read on this host.
    other = harness.running_pool(client)
    message = fails(client, "volume.clone", "unsupported", pool=other, source_pool=name,
                    source=target.volume_name(1), name="copy.raw")
    assert f"cannot copy a volume of iscsi-direct pool {name!r}" in message
    assert names(client, other) == []

    wiped = call(client, "volume.wipe", pool=name, name=target.volume_name(1), timeout=300)
    assert wiped["changed"] is True
    with open(target.backing[0], "rb") as handle:
        assert handle.read(MiB) == bytes(MiB), "zeros written through the initiator onto the LUN"

    assert call(client, "pool.stop", name=name)["state"] == "inactive"
    assert call(client, "pool.start", name=name)["state"] == "running"


def test_wrong_target_fails_and_leaves_no_definition(harness, client, iscsi_target, libvirt_conn):
    target = iscsi_target(luns=[8 * MiB])
    name = harness.name("iscsi")
    wrong_initiator = iscsi_pool(name, target, initiator=target.initiator_iqn + "x", start=True)
    message = fails(client, "pool.define", "not_found", **wrong_initiator)
    assert message.startswith("the iSCSI login failed: the portal has no target with the pool's IQN, or the target "
                              "does not admit the pool's initiator IQN") and "Target not found" in message
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]
    closed = iscsi_pool(name, target, start=True)
    closed["source"]["host"][0]["port"] = 1
    message = fails(client, "pool.define", "unavailable", **closed)
    assert message.startswith("the iSCSI portal of the pool did not answer")
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]


def test_attach_a_lun_as_the_network_disk_libvirt_makes_of_it(harness, client, iscsi_target, domain, libvirt_conn):
    target = iscsi_target(luns=[16 * MiB])
    name = harness.name("iscsi")
    call(client, "pool.define", **iscsi_pool(name, target, start=True))
    lun = target.volume_name(1)
    attached = call(client, "volume.attach", domain=domain, pool=name, name=lun, target="vdb")
    assert attached == {"domain": domain, "target": "vdb", "pool": name, "name": lun, "changed": True}
    assert call(client, "volume.attach", domain=domain, pool=name, name=lun, target="vdb")["changed"] is False

    defined = libvirt_conn.lookupByName(domain).XMLDesc(INACTIVE)
    disk = etree.fromstring(defined).find("devices/disk[@type='volume']")
    assert dict(disk.find("source").attrib) == {"pool": name, "volume": lun}
    assert disk.find("driver").get("type") == "raw" and disk.find("target").get("dev") == "vdb"

    # What qemu is given when the domain starts: libvirt's translation of the volume into an iSCSI
    # network disk (this host's qemu lacks the iscsi block driver, so it is not started here).
    argv = libvirt_conn.domainXMLToNative("qemu-argv", defined, 0)
    blockdevs = [json.loads(word.strip("'")) for word in argv.split(" -blockdev ")[1:]
                 for word in [word.split(" -")[0]]]
    [network] = [b for b in blockdevs if b.get("driver") == "iscsi"]
    assert (network["portal"], network["target"], network["lun"], network["initiator-name"], network["transport"]) \
        == (f"{target.host}:{target.port}", target.iqn, 1, target.initiator_iqn, "tcp")

    gone = call(client, "volume.detach", domain=domain, target="vdb")
    assert gone == {"domain": domain, "target": "vdb", "pool": name, "name": lun, "changed": True}
