"""fs pools on real loop devices through the worker: libvirt mounts the filesystem when the pool
starts and unmounts it when it stops, the data stays; builds never overwrite and converge; every
failure of mount, umount and mkfs has a code of its own and says what to do."""

from __future__ import annotations

import os
import subprocess

import libvirt
import pytest

from tests.integration.block_helpers import ALL_OPERATIONS, MiB, call, fails, mounts_at, names, sha256, write_file
from tests.integration.storage_devices import XFS_MIN_SIZE, loop_device  # noqa: F401

pytestmark = pytest.mark.integration

SIZE = {"ext4": 64 * MiB, "xfs": XFS_MIN_SIZE + 20 * MiB}


@pytest.fixture
def harness(loop_device, make_worker):
    """The worker; its pools are removed (unmounted) before the loop devices are released."""
    return make_worker()


def fs_pool(harness, name: str, device: str, fmt: str | None, **extra) -> dict:
    source = {"device": [{"path": device}], **({"format": fmt} if fmt else {})}
    return {"name": name, "type": "fs", "source": source, "target": {"path": str(harness.root / f"mnt-{name}")},
            **extra}


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_fs_pool_lifecycle(harness, client, loop_device, libvirt_conn, fs):
    device = loop_device(SIZE[fs])  # blank: the pool's build makes the filesystem
    name = harness.name("fs")
    spec = fs_pool(harness, name, device.path, fs, build=True, start=True)
    target = spec["target"]["path"]

    made = call(client, "pool.define", **spec)
    assert made["changed"] is True and made["state"] == "running" and made["type"] == "fs"
    assert made["operations"] == ALL_OPERATIONS
    assert device.probe() == fs and mounts_at(target) == [(device.path, fs)]
    assert 0 < made["available"] < made["capacity"] <= device.size

    # ext4's lost+found is the filesystem's: no volume, in a listing or a look-up.
    assert names(client, name) == []
    if fs == "ext4":
        assert "lost+found" in os.listdir(target) and "lost+found" in [
            v.name() for v in libvirt_conn.storagePoolLookupByName(name).listAllVolumes(0)]
    fails(client, "volume.info", "not_found", pool=name, name="lost+found")

    sparse = call(client, "volume.create", pool=name, name="a.raw", capacity=16 * MiB)
    full = call(client, "volume.create", pool=name, name="full.raw", capacity=4 * MiB, allocation=4 * MiB)
    qcow = call(client, "volume.create", pool=name, name="b.qcow2", capacity=64 * MiB, format="qcow2")
    assert sparse["path"] == f"{target}/a.raw" and sparse["allocation"] == 0
    assert full["allocation"] >= 4 * MiB
    handle = libvirt_conn.storagePoolLookupByName(name).storageVolLookupByName("b.qcow2")
    physical = handle.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    assert qcow["physical"] == physical == os.path.getsize(qcow["path"]) < MiB
    assert sparse["physical"] == 16 * MiB and sparse["backing"] is None

    data = os.urandom(2 * MiB)
    source = write_file(harness.root / "data.bin", data)
    call(client, "volume.upload", pool=name, name="a.raw", source={"path": str(source)}, offset=MiB)
    before = sha256(sparse["path"])

    assert call(client, "pool.stop", name=name)["state"] == "inactive"
    assert mounts_at(target) == [] and os.listdir(target) == [], "stop unmounts; the files are on the device"
    restarted = call(client, "pool.start", name=name)
    assert restarted["changed"] is True and mounts_at(target) == [(device.path, fs)]
    assert names(client, name) == ["a.raw", "b.qcow2", "full.raw"]
    assert sha256(sparse["path"]) == before
    out = harness.root / "out.bin"
    call(client, "volume.download", pool=name, name="a.raw", destination={"path": str(out)}, offset=MiB,
         length=len(data))
    assert out.read_bytes() == data

    # Everything converges: the device holds the pool's filesystem, the pool runs.
    again = call(client, "pool.define", **spec)
    assert again["changed"] is False and again["uuid"] == made["uuid"]
    assert call(client, "pool.build", name=name)["changed"] is False
    call(client, "pool.stop", name=name)
    assert call(client, "pool.build", name=name)["changed"] is False, "already formatted using the pool's format"
    assert call(client, "pool.build", name=name, overwrite=False)["changed"] is False
    assert device.probe() == fs

    # delete of a stopped fs pool removes the mount point only: the filesystem and its files stay.
    deleted = call(client, "pool.delete", name=name)
    assert deleted["changed"] is True and not os.path.exists(target) and device.probe() == fs
    assert call(client, "pool.delete", name=name)["changed"] is False
    message = fails(client, "pool.start", "invalid", name=name)
    assert f"the mount point {target} does not exist" in message and "pool.build" in message
    assert call(client, "pool.start", name=name, build=True)["state"] == "running"
    assert names(client, name) == ["a.raw", "b.qcow2", "full.raw"] and sha256(sparse["path"]) == before


def test_start_with_build_formats_a_blank_device_and_keeps_a_formatted_one(harness, client, loop_device):
    blank = loop_device(SIZE["ext4"])
    name = harness.name("fs")
    call(client, "pool.define", **fs_pool(harness, name, blank.path, "ext4"))
    started = call(client, "pool.start", name=name, build=True)
    assert started["state"] == "running" and blank.probe() == "ext4"
    call(client, "volume.create", pool=name, name="keep.raw", capacity=MiB)
    call(client, "pool.stop", name=name)
    call(client, "pool.start", name=name, build=True)
    assert names(client, name) == ["keep.raw"], "a start with build never formats a device that holds data"


def test_build_never_overwrites_another_filesystem_unless_told(harness, client, loop_device, libvirt_conn):
    device = loop_device(SIZE["xfs"], fs="xfs")
    name = harness.name("fs")
    message = fails(client, "pool.define", "conflict", **fs_pool(harness, name, device.path, "ext4", build=True))
    assert device.path in message and "'ext4'" in message and "overwrite: true" in message
    assert device.probe() == "xfs"
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)], "the failed define left nothing"

    call(client, "pool.define", **fs_pool(harness, name, device.path, "ext4"))
    fails(client, "pool.build", "conflict", name=name)
    fails(client, "pool.build", "conflict", name=name, overwrite=False)
    assert device.probe() == "xfs"
    message = fails(client, "pool.start", "invalid", name=name)
    assert f"{device.path} holds no ext4 filesystem" in message and "overwrite: true" in message
    assert call(client, "pool.build", name=name, overwrite=True)["changed"] is True
    assert device.probe() == "ext4"
    assert call(client, "pool.start", name=name)["state"] == "running"


def test_mount_umount_and_mkfs_failures_have_their_own_codes(harness, client, loop_device, libvirt_conn):
    device = loop_device(SIZE["ext4"], fs="ext4")
    name = harness.name("fs")
    spec = fs_pool(harness, name, device.path, "ext4")
    target = spec["target"]["path"]

    # define + start without build: no mount point. The definition goes with the failure.
    message = fails(client, "pool.define", "invalid", **spec, start=True)
    assert message == (f"mounting {device.path} on {target} failed: the mount point {target} does not exist. "
                       f"Build the pool (pool.build, or pool.start with build: true) or create the directory, "
                       f"then start it again")
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]

    call(client, "pool.define", **spec, build=True)
    holder = os.open(device.path, os.O_RDONLY | os.O_EXCL)  # as another exclusive user would
    try:
        message = fails(client, "pool.start", "busy", name=name)
        assert f"{device.path} is in use" in message
        message = fails(client, "pool.build", "busy", name=name, overwrite=True)
        assert message.startswith(f"formatting {device.path} failed: it is in use")
    finally:
        os.close(holder)
    assert device.probe() == "ext4"

    call(client, "pool.start", name=name)
    with open(os.path.join(target, "held"), "w"):
        message = fails(client, "pool.stop", "busy", name=name)
        assert f"unmounting {target} failed: programs still use files under it" in message
        assert call(client, "pool.info", name=name)["state"] == "running" and mounts_at(target)
    call(client, "pool.stop", name=name)
    assert mounts_at(target) == []

    with open(os.path.join(target, "stray"), "w"):  # a file of the mount point itself, not of the device
        pass
    message = fails(client, "pool.delete", "invalid", name=name)
    assert f"removes only its mount point {target}" in message and "not empty" in message
    os.unlink(os.path.join(target, "stray"))

    gone = harness.name("gone")
    missing = fs_pool(harness, gone, "/dev/nonexistent-blk", "ext4")
    message = fails(client, "pool.define", "not_found", **missing, build=True)
    assert message == f"building pool {gone!r} failed: its source device does not exist on this host"
    call(client, "pool.define", **missing)
    assert os.path.isdir(missing["target"]["path"]), "libvirt makes the mount point even when the build fails"
    message = fails(client, "pool.start", "not_found", name=gone)
    assert "the source device /dev/nonexistent-blk does not exist on this host" in message


def test_auto_format_cannot_be_built(harness, client, loop_device):
    blank = loop_device(SIZE["ext4"])
    name = harness.name("fs")
    message = fails(client, "pool.define", "invalid", **fs_pool(harness, name, blank.path, "auto", build=True))
    assert "source.format is 'auto'" in message and "'ext4'" in message
    assert blank.probe() is None


def test_lost_and_found_is_never_reported_as_a_volume(loop_device, make_worker):
    """Whether ext4's lost+found is there or not, and whenever it comes or goes, re-listings never
    publish it; a volume made outside the worker in the same pool is published."""
    from tests.conftest import unique
    from tests.integration.test_events import EventStream

    device = loop_device(SIZE["ext4"], fs="ext4")
    tag = unique("t")
    stream = EventStream(f"test-{tag}", tag)
    try:
        harness = make_worker(host_id=tag, prefix=f"test-{tag}", reconcile_interval=0.5)
        client = harness.client()
        name = harness.name("fs")
        spec = fs_pool(harness, name, device.path, "ext4", build=True, start=True)
        call(client, "pool.define", **spec)
        target = spec["target"]["path"]
        # The monitor lists a pool's volumes first after its started event; a refresh event that
        # comes after that one is handled after that listing: from then on, changes are published.
        stream.wait(lambda e: e["type"] == "storage.pool.started" and e["subject"] == f"pools/{name}", 10, "started")
        refresh = client.call("pool.refresh", {"name": name}, timeout=60)
        stream.wait(lambda e: e["type"] == "storage.pool.refreshed" and e.get("commandid") == refresh.id, 10,
                    "refreshed")

        def published(volume: str) -> None:
            stream.wait(lambda e: e["type"] == "storage.volume.created" and e["data"]["volume"]["name"] == volume,
                        10, f"the external volume {volume}")

        def virsh(*args: str) -> None:
            subprocess.run(["virsh", "-q", *args], check=True, capture_output=True)

        # libvirt sees the directory change at a refresh; the volume made after it is published
        # only by a re-listing that saw the refresh too.
        os.rmdir(os.path.join(target, "lost+found"))
        virsh("pool-refresh", name)
        virsh("vol-create-as", name, "outside1.raw", "1M")
        published("outside1.raw")
        subprocess.run(["mklost+found"], cwd=target, check=True, capture_output=True)
        virsh("pool-refresh", name)
        virsh("vol-create-as", name, "outside2.raw", "1M")
        published("outside2.raw")
        about = [e for e in stream.events() if e["type"].startswith("storage.volume.")
                 and e["data"]["volume"]["name"] == "lost+found"]
        assert about == []
        assert names(client, name) == ["outside1.raw", "outside2.raw"]
    finally:
        stream.close()
