"""Full pools answer `no_space` (requested and available bytes in the message, nothing left behind),
found before anything is made where the bytes are known up front and from libvirt's ENOSPC
otherwise; `pool.capacity.low` fires as a pool fills. On a real 64 MiB ext4 and a 64 MiB disk."""

from __future__ import annotations

import os

import pytest

from tests.conftest import unique
from tests.integration.block_helpers import MiB, call, fails, names, write_file
from tests.integration.storage_devices import loop_device  # noqa: F401
from tests.integration.test_events import EventStream

pytestmark = pytest.mark.integration


@pytest.fixture
def watched(loop_device, make_worker):
    """A worker whose events are all captured from its first, low-capacity threshold 0.5; its pools
    are removed before the loop devices are released."""
    streams = []

    def make():
        tag = unique("t")
        stream = EventStream(f"test-{tag}", tag)
        streams.append(stream)
        return make_worker(host_id=tag, prefix=f"test-{tag}", capacity_low=0.5, reconcile_interval=2.0), stream

    yield make
    for stream in streams:
        stream.close()


def test_a_filling_fs_pool(watched, loop_device):
    harness, stream = watched()
    client = harness.client()
    device = loop_device(64 * MiB)
    name = harness.name("fs")
    target = harness.root / name
    pool = call(client, "pool.define", name=name, type="fs", target={"path": str(target)},
                source={"device": [{"path": device.path}], "format": "ext4"}, build=True, start=True)
    capacity = pool["capacity"]

    def available() -> int:
        return call(client, "pool.info", name=name)["available"]

    def files() -> list[str]:
        return sorted(f for f in os.listdir(target) if f != "lost+found")

    # 20 MiB of data in a sparse volume, then a fully allocated one: the pool fills past half.
    call(client, "volume.create", pool=name, name="data.raw", capacity=32 * MiB)
    source = write_file(harness.root / "data.bin", os.urandom(20 * MiB))
    call(client, "volume.upload", pool=name, name="data.raw", source={"path": str(source)})
    assert not [e for e in stream.events("storage.pool.capacity.low") if e["subject"] == f"pools/{name}"]
    call(client, "volume.create", pool=name, name="full.raw", capacity=12 * MiB, allocation=12 * MiB)
    [low] = stream.wait(lambda e: e["type"] == "storage.pool.capacity.low" and e["subject"] == f"pools/{name}",
                        10, "pool.capacity.low")
    assert low["data"]["pool"]["available"] / capacity < 0.5 and low["data"]["threshold"] == 0.5

    # Fully allocated and too big: refused before a file exists.
    free = available()
    message = fails(client, "volume.create", "no_space", pool=name, name="big.raw", capacity=free + MiB,
                    allocation=free + MiB)
    assert message.startswith(f"volume 'big.raw' needs {free + MiB} bytes allocated up front, but pool {name!r} "
                              f"has {free} bytes available")
    assert files() == ["data.raw", "full.raw"] and names(client, name) == ["data.raw", "full.raw"]
    # The same create of an existing volume still converges in a full pool.
    again = call(client, "volume.create", pool=name, name="full.raw", capacity=12 * MiB, allocation=12 * MiB)
    assert again["changed"] is False

    result = client.call("volume.resize", {"pool": name, "name": "full.raw", "capacity": 64 * MiB, "allocate": True})
    assert result.status.value == "failed" and result.error.code.value == "no_space"
    assert result.error.retryable is False and f"has {free} bytes available" in result.error.message
    assert call(client, "volume.info", pool=name, name="full.raw")["capacity"] == 12 * MiB

    # Two clones of the 20 MiB of data do not fit: the second is refused before it copies a byte.
    assert 20 * MiB < free < 40 * MiB
    call(client, "volume.clone", pool=name, source="data.raw", name="copy1.raw", timeout=300)
    message = fails(client, "volume.clone", "no_space", pool=name, source="data.raw", name="copy2.raw")
    assert f"the clone 'copy2.raw' of {name}/data.raw needs {20 * MiB} bytes, but pool {name!r} has" in message
    assert "copy2.raw" not in files()

    # A sparse volume takes what is written: the filesystem runs out mid-upload (libvirt's ENOSPC).
    call(client, "volume.create", pool=name, name="sparse.raw", capacity=1024 * MiB)
    big = write_file(harness.root / "big.bin", os.urandom(24 * MiB))
    message = fails(client, "volume.upload", "no_space", pool=name, name="sparse.raw", source={"path": str(big)},
                    sparse=False)
    assert message.startswith(f"the upload into volume 'sparse.raw' in pool {name!r} needs {24 * MiB} bytes, "
                              f"but pool {name!r} has")


def test_a_disk_pool_without_a_large_enough_gap(harness_disk):
    harness, client, device = harness_disk
    name = harness.name("disk")
    call(client, "pool.define", name=name, type="disk", target={"path": "/dev"},
         source={"device": [{"path": device.path}], "format": "gpt"}, build=True, start=True)
    part = device.partition_name
    for number in (1, 2, 3):
        call(client, "volume.create", pool=name, name=part(number), capacity=20 * MiB)
    call(client, "volume.delete", pool=name, name=part(2))
    free = call(client, "pool.info", name=name)["available"]
    assert free > 22 * MiB, "the 20 MiB gap and the tail together"
    # Enough bytes in all, no gap large enough: libvirt's "no large enough free extent".
    message = fails(client, "volume.create", "no_space", pool=name, name=part(2), capacity=22 * MiB)
    assert message.startswith(f"volume {part(2)!r} needs {22 * MiB} bytes allocated up front, but pool {name!r} "
                              f"has {free} bytes available")
    assert [n for n, _, _ in device.partitions()] == [1, 3]
    assert call(client, "volume.create", pool=name, name=part(2), capacity=16 * MiB)["changed"] is True


@pytest.fixture
def harness_disk(loop_device, make_worker):
    device = loop_device(64 * MiB)
    harness = make_worker()
    return harness, harness.client(), device
