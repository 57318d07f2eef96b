"""What control planes size and place volumes from: host.info's pool_capabilities, the pool object's
operations, and the volume object's physical and backing, against the real libvirtd."""

from __future__ import annotations

import os
import subprocess

import libvirt
import pytest
from lxml import etree

from tests.integration.block_helpers import ALL_OPERATIONS, MiB, call
from worker.virt import pool_types

pytestmark = pytest.mark.integration


def test_host_info_pool_capabilities(client, libvirt_conn):
    info = call(client, "host.info")
    root = etree.fromstring(libvirt_conn.getStoragePoolCapabilities(0))
    supported = sorted(p.get("type") for p in root.findall("pool") if p.get("supported") == "yes")
    capabilities = {c["type"]: c for c in info["pool_capabilities"]}
    assert info["pool_types"] == supported == sorted(capabilities)
    for kind, capability in capabilities.items():
        listed = [v.text for v in root.findall(f"pool[@type='{kind}']/volOptions/enum[@name='targetFormatType']/value")]
        assert capability["volume_formats"] == listed
        assert capability["operations"] == pool_types.operations(kind)
    assert capabilities["dir"]["operations"] == ALL_OPERATIONS
    assert {"raw", "qcow2", "vmdk"} <= set(capabilities["fs"]["volume_formats"])
    assert capabilities["disk"]["volume_formats"] == ["none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm",
                                                      "linux-raid", "extended"]
    assert capabilities["disk"]["operations"] == ["create", "delete", "upload", "download", "wipe", "clone", "attach"]
    if "iscsi-direct" in capabilities:
        assert capabilities["iscsi-direct"] == {"type": "iscsi-direct", "volume_formats": [],
                                                "operations": ["wipe", "attach"]}


def test_pool_object_says_what_the_worker_can_run_there(client, pool):
    assert call(client, "pool.info", name=pool)["operations"] == ALL_OPERATIONS
    listed = {p["name"]: p for p in call(client, "pool.list")["pools"]}
    assert listed[pool]["operations"] == ALL_OPERATIONS


def test_physical_is_what_libvirt_reports_as_physical(client, pool, libvirt_conn):
    sparse = call(client, "volume.create", pool=pool, name="s.raw", capacity=16 * MiB)
    qcow = call(client, "volume.create", pool=pool, name="q.qcow2", capacity=64 * MiB, format="qcow2")
    handle = libvirt_conn.storagePoolLookupByName(pool)
    for made in (sparse, qcow):
        physical = handle.storageVolLookupByName(made["name"]).infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        assert made["physical"] == physical == os.path.getsize(made["path"])
    assert (sparse["allocation"], sparse["physical"]) == (0, 16 * MiB), "a hole has a length but takes no blocks"
    assert qcow["physical"] < MiB < qcow["capacity"]


def test_backing_names_the_pool_and_volume_or_only_the_path(harness, client, pool):
    other = harness.running_pool(client)
    call(client, "volume.create", pool=pool, name="base.qcow2", capacity=16 * MiB, format="qcow2")
    overlay = call(client, "volume.create", pool=other, name="child.qcow2", capacity=16 * MiB, format="qcow2",
                   backing={"pool": pool, "name": "base.qcow2"})
    base_path = str(harness.root / pool / "base.qcow2")
    assert overlay["backing"] == {"pool": pool, "name": "base.qcow2", "path": base_path, "format": "qcow2"}
    assert call(client, "volume.info", pool=other, name="child.qcow2")["backing"] == overlay["backing"]
    listed = {v["name"]: v for v in call(client, "volume.list", pool=other)["volumes"]}
    assert listed["child.qcow2"]["backing"] == overlay["backing"]
    assert call(client, "volume.info", pool=pool, name="base.qcow2")["backing"] is None

    # A backing file that is no pool's volume: its path and format, no pool or name.
    outside = harness.root / "outside.raw"
    outside.write_bytes(b"")
    os.truncate(outside, MiB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(outside), "-F", "raw",
                    str(harness.root / other / "stray.qcow2")], check=True)
    call(client, "pool.refresh", name=other)
    assert call(client, "volume.info", pool=other, name="stray.qcow2")["backing"] == {
        "pool": None, "name": None, "path": str(outside), "format": "raw"}
