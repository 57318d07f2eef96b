"""disk pools on real loop devices through the worker: a GPT label made by the build (never over
existing data unless overwrite), partitions as volumes, named as the kernel names them, made,
described, written, read, wiped and removed; partitions a failed create leaves are cleaned up."""

from __future__ import annotations

import hashlib
import os

import libvirt
import pytest

from tests.integration.block_helpers import MiB, call, fails, names, sha256, write_file
from tests.integration.storage_devices import loop_device, volume_xml  # noqa: F401
from worker.virt import partitions

pytestmark = pytest.mark.integration

DISK_OPERATIONS = ["create", "delete", "upload", "download", "wipe", "clone", "attach"]


@pytest.fixture
def harness(loop_device, make_worker):
    """The worker; its pools are removed before the loop devices are released."""
    return make_worker()


def disk_pool(name: str, device: str, fmt: str | None = "gpt", **extra) -> dict:
    source = {"device": [{"path": device}], **({"format": fmt} if fmt else {})}
    return {"name": name, "type": "disk", "source": source, "target": {"path": "/dev"}, **extra}


def test_build_labels_a_blank_device_and_spares_a_labeled_one(harness, client, loop_device, libvirt_conn):
    blank = loop_device(32 * MiB)
    name = harness.name("disk")
    made = call(client, "pool.define", **disk_pool(name, blank.path, build=True, start=True))
    assert made["state"] == "running" and made["operations"] == DISK_OPERATIONS
    assert blank.probe("PTTYPE") == "gpt"
    assert 0 < made["available"] <= made["capacity"] <= blank.size
    assert call(client, "pool.define", **disk_pool(name, blank.path, build=True, start=True))["changed"] is False

    dos = loop_device(32 * MiB, label="msdos")
    other = harness.name("disk")
    message = fails(client, "pool.define", "conflict", **disk_pool(other, dos.path, build=True))
    assert dos.path in message and "'gpt'" in message and "overwrite: true" in message
    assert dos.probe("PTTYPE") == "dos" and other not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]

    call(client, "pool.define", **disk_pool(other, dos.path))
    fails(client, "pool.build", "conflict", name=other)
    assert dos.probe("PTTYPE") == "dos"
    assert call(client, "pool.build", name=other, overwrite=True)["changed"] is True
    assert dos.probe("PTTYPE") == "gpt"
    assert call(client, "pool.build", name=other)["changed"] is False, "already formatted using 'gpt'"

    later = loop_device(32 * MiB)
    third = harness.name("disk")
    call(client, "pool.define", **disk_pool(third, later.path))
    message = fails(client, "pool.start", "invalid", name=third)
    assert "is unrecognized, requires build" in message
    assert call(client, "pool.start", name=third, build=True)["state"] == "running" and later.probe("PTTYPE") == "gpt"


def test_partitions_as_volumes(harness, client, loop_device):
    device = loop_device(64 * MiB)
    name = harness.name("disk")
    call(client, "pool.define", **disk_pool(name, device.path, build=True, start=True))
    part = device.partition_name

    message = fails(client, "volume.create", "invalid", pool=name, name="data", capacity=8 * MiB)
    assert f"name the volume {part(1)!r} (got 'data')" in message and device.path in message
    assert device.partitions() == [], "refused before the partition table changed"

    first = call(client, "volume.create", pool=name, name=part(1), capacity=8 * MiB)
    assert (first["type"], first["path"], first["capacity"], first["allocation"], first["physical"]) == \
        ("block", f"/dev/{part(1)}", 8 * MiB, 8 * MiB, 8 * MiB)
    assert call(client, "volume.create", pool=name, name=part(1), capacity=8 * MiB)["changed"] is False

    odd = call(client, "volume.create", pool=name, name=part(2), capacity=10**7, format="linux")
    assert odd["capacity"] == 10000384 and odd["format"] == "linux", "rounded up to the next 512-byte sector"
    call(client, "pool.refresh", name=name)
    assert call(client, "volume.info", pool=name, name=part(2))["format"] == "none", "libvirt reads types back as none"
    again = call(client, "volume.create", pool=name, name=part(2), capacity=10**7, format="linux")
    assert again["changed"] is False
    message = fails(client, "volume.create", "conflict", pool=name, name=part(2), capacity=20 * MiB)
    assert "capacity is 10000384 on the host" in message
    assert [n for n, _, _ in device.partitions()] == [1, 2]

    data = os.urandom(3 * MiB)
    source = write_file(harness.root / "data.bin", data)
    uploaded = call(client, "volume.upload", pool=name, name=part(1), source={"path": str(source)}, offset=MiB)
    assert uploaded["bytes"] == len(data)
    assert sha256(f"/dev/{part(1)}", MiB, len(data)) == hashlib.sha256(data).hexdigest()
    out = harness.root / "out.bin"
    assert call(client, "volume.download", pool=name, name=part(1), destination={"path": str(out)})["bytes"] > 0
    assert out.stat().st_size == 8 * MiB and sha256(out, MiB, len(data)) == hashlib.sha256(data).hexdigest()

    clone = call(client, "volume.clone", pool=name, source=part(1), name=part(3), timeout=300)
    assert clone["path"] == f"/dev/{part(3)}" and sha256(clone["path"]) == sha256(f"/dev/{part(1)}")

    call(client, "volume.wipe", pool=name, name=part(1), timeout=300)
    assert sha256(f"/dev/{part(1)}") == hashlib.sha256(bytes(8 * MiB)).hexdigest()

    message = fails(client, "volume.resize", "unsupported", pool=name, name=part(1), capacity=16 * MiB)
    assert message.startswith(f"volume.resize is not supported on disk pools (pool {name!r})")
    assert call(client, "volume.info", pool=name, name=part(1))["capacity"] == 8 * MiB

    # libvirt's own delete fails on loop devices ("Partition doesn't exist"); the worker's works.
    deleted = call(client, "volume.delete", pool=name, name=part(2))
    assert deleted["changed"] is True and [n for n, _, _ in device.partitions()] == [1, 3]
    assert names(client, name) == [part(1), part(3)] and not os.path.exists(f"/dev/{part(2)}")
    assert call(client, "volume.delete", pool=name, name=part(2))["changed"] is False
    message = fails(client, "volume.create", "invalid", pool=name, name=part(4), capacity=MiB)
    assert f"the next partition will be {part(2)!r}" in message, "GPT reuses the lowest free number"
    call(client, "volume.create", pool=name, name=part(2), capacity=MiB)

    message = fails(client, "volume.create", "no_space", pool=name, name=part(4), capacity=64 * MiB)
    assert f"volume {part(4)!r} needs {64 * MiB} bytes allocated up front, but pool {name!r} has" in message
    assert [n for n, _, _ in device.partitions()] == [1, 2, 3]

    # Deleting a disk pool's storage erases its partition table: not while it holds partitions.
    call(client, "pool.stop", name=name)
    message = fails(client, "pool.delete", "invalid", name=name)
    assert f"erase the partition table of {device.path}" in message and part(3) in message
    assert device.probe("PTTYPE") == "gpt"
    call(client, "pool.start", name=name)
    for number in (1, 2, 3):
        call(client, "volume.delete", pool=name, name=part(number))
    call(client, "pool.stop", name=name)
    assert call(client, "pool.delete", name=name)["changed"] is True
    assert device.probe("PTTYPE") is None


def test_partitions_left_by_failed_creates_are_cleaned_up(harness, client, loop_device, libvirt_conn, monkeypatch):
    device = loop_device(64 * MiB)
    name = harness.name("disk")
    call(client, "pool.define", **disk_pool(name, device.path, build=True, start=True))
    part = device.partition_name
    call(client, "volume.create", pool=name, name=part(1), capacity=4 * MiB)

    # A failure after parted made the partition: the worker is made to expect a wrong number, so
    # libvirt refuses the name once partition 2 exists. The worker removes it again.
    real = partitions.next_number
    monkeypatch.setattr(partitions, "next_number", lambda table, fmt=None: 7)
    message = fails(client, "volume.create", "invalid", pool=name, name=part(7), capacity=4 * MiB)
    assert f"expected '{part(2)}'" in message
    assert [n for n, _, _ in device.partitions()] == [1], "the partition libvirt made was removed"
    monkeypatch.setattr(partitions, "next_number", real)
    assert call(client, "volume.create", pool=name, name=part(2), capacity=4 * MiB)["changed"] is True

    # A partition leaked outside the worker (libvirt directly, with a name it refuses): libvirt
    # lists it only after a refresh and finds no free extent until then. The worker catches up.
    pool = libvirt_conn.storagePoolLookupByName(name)
    with pytest.raises(libvirt.libvirtError, match="invalid partition name"):
        pool.createXML(volume_xml("data", 4 * MiB), 0)
    assert [n for n, _, _ in device.partitions()] == [1, 2, 3]
    made = call(client, "volume.create", pool=name, name=part(4), capacity=4 * MiB)
    assert made["changed"] is True and names(client, name) == [part(n) for n in (1, 2, 3, 4)]
