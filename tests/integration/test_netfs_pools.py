"""netfs pools through the worker: the NFS protocol version and mount options in the XML libvirt
stores, and a start that cannot work on this host (no NFS client) answered with its cause."""

from __future__ import annotations

import libvirt
import pytest
from lxml import etree

from tests.integration.block_helpers import call, fails

pytestmark = pytest.mark.integration

FS = "{http://libvirt.org/schemas/storagepool/fs/1.0}"


def netfs_pool(harness, name: str, **extra) -> dict:
    return {"name": name, "type": "netfs", "target": {"path": str(harness.root / name)},
            "source": {"host": [{"name": "127.0.0.1"}], "dir": "/export/images", "format": "nfs",
                       "protocol_version": "4.1"},
            "mount_options": ["sync", "lazytime", "rsize=65536"], **extra}


def test_protocol_version_and_mount_options_round_trip(harness, client, libvirt_conn):
    name = harness.name("nfs")
    made = call(client, "pool.define", **netfs_pool(harness, name))
    assert made["changed"] is True and made["state"] == "inactive"
    stored = etree.fromstring(libvirt_conn.storagePoolLookupByName(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
    assert stored.find("source/protocol").get("ver") == "4.1"
    assert [o.get("name") for o in stored.findall(f"{FS}mount_opts/{FS}option")] == ["sync", "lazytime", "rsize=65536"]

    assert call(client, "pool.define", **netfs_pool(harness, name))["changed"] is False
    message = fails(client, "pool.define", "conflict", **netfs_pool(harness, name, mount_options=["sync"]))
    assert "mount_options is ['sync', 'lazytime', 'rsize=65536'] on the host" in message
    other = netfs_pool(harness, name)
    other["source"]["protocol_version"] = "3"
    message = fails(client, "pool.define", "conflict", **other)
    assert "source.protocol_version is '4.1' on the host, the command asks for '3'" in message


def test_start_without_an_nfs_client_fails_with_its_cause_and_leaves_no_definition(harness, client, libvirt_conn):
    name = harness.name("nfs")
    message = fails(client, "pool.define", "unsupported", **netfs_pool(harness, name, build=True, start=True))
    assert "this host's kernel cannot mount nfs filesystems (mount: unknown filesystem type 'nfs')" in message
    assert "127.0.0.1:/export/images" in message
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]

    call(client, "pool.define", **netfs_pool(harness, name, build=True))
    result = client.call("pool.start", {"name": name}, timeout=60)
    assert result.status.value == "failed" and result.error.code.value == "unsupported"
    assert "nfsvers=4.1,sync,lazytime,rsize=65536" in result.error.libvirt.message, "libvirt mounted with the options"
    assert call(client, "pool.info", name=name)["state"] == "inactive"


def test_bad_options_are_rejected_naming_them(harness, client):
    name = harness.name("nfs")
    for options, said in ((["exec"], "would undo libvirt's nodev,nosuid,noexec"), (["a,b"], "mount_options[0]"),
                          (["nfsvers=3"], "source.protocol_version")):
        document = netfs_pool(harness, name, mount_options=options)
        message = fails(client, "pool.define", "invalid", "rejected", **document)
        assert said in message
    fs = {"name": name, "type": "fs", "target": {"path": str(harness.root / name)},
          "source": {"device": [{"path": "/dev/loop0"}]}, "mount_options": ["sync"]}
    assert "a fs pool takes no mount_options" in fails(client, "pool.define", "invalid", "rejected", **fs)
