"""Volume lifecycle through the whole path, checked against what libvirtd and the disk say."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.conftest import error_of, ok

pytestmark = pytest.mark.integration

MiB = 2**20
GiB = 2**30


def qemu_img_info(path: str) -> str:
    return subprocess.run(["qemu-img", "info", "-U", path], capture_output=True, text=True, check=True).stdout


def test_create_raw_is_sparse_by_default_and_converges(client, pool, libvirt_conn):
    made = ok(client.call("volume.create", {"pool": pool, "name": "a.raw", "capacity": GiB}))
    assert made["changed"] is True and made["format"] == "raw" and made["capacity"] == GiB
    assert made["allocation"] < MiB, "a volume without allocation must be sparse"
    assert os.path.getsize(made["path"]) == GiB
    volume = libvirt_conn.storagePoolLookupByName(pool).storageVolLookupByName("a.raw")
    assert volume.info()[1] == GiB

    again = ok(client.call("volume.create", {"pool": pool, "name": "a.raw", "capacity": GiB}))
    assert again["changed"] is False and again["key"] == made["key"]


def test_create_with_allocation_preallocates(client, pool):
    made = ok(client.call("volume.create", {"pool": pool, "name": "b.raw", "capacity": 64 * MiB,
                                            "allocation": 64 * MiB}))
    assert made["allocation"] >= 64 * MiB
    assert os.stat(made["path"]).st_blocks * 512 >= 64 * MiB


def test_create_qcow2_with_metadata_preallocation_and_backing(client, pool):
    base = ok(client.call("volume.create", {"pool": pool, "name": "base.qcow2", "capacity": GiB,
                                            "format": "qcow2", "prealloc_metadata": True}))
    assert base["format"] == "qcow2"
    assert "file format: qcow2" in qemu_img_info(base["path"])
    child = ok(client.call("volume.create", {"pool": pool, "name": "child.qcow2", "capacity": GiB,
                                             "format": "qcow2", "backing": {"pool": pool, "name": "base.qcow2"}}))
    info = qemu_img_info(child["path"])
    assert f"backing file: {base['path']}" in info
    assert "backing file format: qcow2" in info
    assert base["backing"] is None
    named = {"pool": pool, "name": "base.qcow2", "path": base["path"], "format": "qcow2"}
    assert child["backing"] == named
    assert ok(client.call("volume.info", {"pool": pool, "name": "child.qcow2"}))["backing"] == named
    listed = ok(client.call("volume.list", {"pool": pool}))["volumes"]
    assert [v["backing"] for v in listed] == [None, named]


def test_create_over_a_different_volume_is_a_conflict(client, pool):
    ok(client.call("volume.create", {"pool": pool, "name": "c.qcow2", "capacity": GiB, "format": "qcow2"}))
    message = error_of(client.call("volume.create", {"pool": pool, "name": "c.qcow2", "capacity": 2 * GiB,
                                                     "format": "raw"}), "failed", "conflict")
    assert str(2 * GiB) in message and "'raw'" in message


def test_create_in_missing_or_stopped_pool(harness, client, pool):
    missing = harness.name("nopool")
    assert missing in error_of(client.call("volume.create", {"pool": missing, "name": "x", "capacity": MiB}),
                               "failed", "not_found")
    ok(client.call("pool.stop", {"name": pool}))
    message = error_of(client.call("volume.create", {"pool": pool, "name": "x", "capacity": MiB}), "failed", "invalid")
    assert pool in message and "not running" in message


def test_backing_volume_must_exist(client, pool):
    message = error_of(client.call("volume.create", {"pool": pool, "name": "d.qcow2", "capacity": MiB,
                                                     "format": "qcow2", "backing": {"pool": pool, "name": "nope"}}),
                       "failed", "not_found")
    assert "'nope'" in message


def test_volume_made_outside_the_worker_that_exists_already_is_a_libvirt_conflict(client, pool, libvirt_conn):
    """A file dropped into the pool directory without a refresh: libvirt reports the clash itself."""
    path = ok(client.call("pool.info", {"name": pool}))["target_path"]
    with open(os.path.join(path, "stray.raw"), "wb") as handle:
        handle.truncate(MiB)
    result = client.call("volume.create", {"pool": pool, "name": "stray.raw", "capacity": 2 * MiB})
    assert result.status.value == "failed"
    assert result.error.libvirt is not None


def test_info_list_delete_and_delete_again(client, pool, libvirt_conn):
    for name in ("v1.raw", "v2.qcow2"):
        ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": MiB,
                                         "format": "qcow2" if name.endswith("qcow2") else "raw"}))
    info = ok(client.call("volume.info", {"pool": pool, "name": "v2.qcow2"}))
    assert info["format"] == "qcow2" and info["type"] == "file" and info["pool"] == pool
    listed = ok(client.call("volume.list", {"pool": pool}))["volumes"]
    assert [v["name"] for v in listed] == ["v1.raw", "v2.qcow2"]

    assert ok(client.call("volume.delete", {"pool": pool, "name": "v1.raw"})) == \
        {"pool": pool, "name": "v1.raw", "changed": True}
    assert not os.path.exists(listed[0]["path"])
    assert ok(client.call("volume.delete", {"pool": pool, "name": "v1.raw"}))["changed"] is False
    assert "v1.raw" not in libvirt_conn.storagePoolLookupByName(pool).listVolumes()
    assert "'v1.raw'" in error_of(client.call("volume.info", {"pool": pool, "name": "v1.raw"}), "failed", "not_found")


def test_delete_with_wipe_overwrites_before_deleting(client, pool):
    made = ok(client.call("volume.create", {"pool": pool, "name": "secret.raw", "capacity": 8 * MiB,
                                            "allocation": 8 * MiB}))
    with open(made["path"], "r+b") as handle:
        handle.write(b"secret" * 1000)
    watcher = os.open(made["path"], os.O_RDONLY)  # keeps the inode readable after the unlink
    try:
        result = ok(client.call("volume.delete", {"pool": pool, "name": "secret.raw", "wipe": True}))
        assert result["changed"] is True
        assert not os.path.exists(made["path"])
        data = os.pread(watcher, 8 * MiB, 0)
        assert b"secret" not in data and data.count(0) == len(data)
    finally:
        os.close(watcher)


def test_info_reads_the_volume_as_it_is_now_after_changes_made_outside(client, pool, libvirt_conn):
    """volume.info keeps the volume's handle between commands (one round trip): what happened to the
    volume or its pool in between must still show, with the usual errors."""
    ok(client.call("volume.create", {"pool": pool, "name": "kept.raw", "capacity": MiB}))
    assert ok(client.call("volume.info", {"pool": pool, "name": "kept.raw"}))["capacity"] == MiB
    handle = libvirt_conn.storagePoolLookupByName(pool)
    handle.storageVolLookupByName("kept.raw").delete(0)
    handle.createXML(f"<volume><name>kept.raw</name><capacity>{3 * MiB}</capacity></volume>", 0)
    assert ok(client.call("volume.info", {"pool": pool, "name": "kept.raw"}))["capacity"] == 3 * MiB

    handle.storageVolLookupByName("kept.raw").delete(0)
    message = error_of(client.call("volume.info", {"pool": pool, "name": "kept.raw"}), "failed", "not_found")
    assert "'kept.raw'" in message and pool in message

    handle.createXML(f"<volume><name>kept.raw</name><capacity>{MiB}</capacity></volume>", 0)
    ok(client.call("volume.info", {"pool": pool, "name": "kept.raw"}))
    handle.destroy()
    assert pool in error_of(client.call("volume.info", {"pool": pool, "name": "kept.raw"}), "failed", "invalid")
    handle.create(0)
    ok(client.call("volume.info", {"pool": pool, "name": "kept.raw"}))
    xml = handle.XMLDesc(0)
    handle.destroy()
    handle.undefine()
    message = error_of(client.call("volume.info", {"pool": pool, "name": "kept.raw"}), "failed", "not_found")
    assert pool in message
    libvirt_conn.storagePoolDefineXML(xml, 0).create(0)  # the fixture removes it
