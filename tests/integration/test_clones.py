"""volume.clone on the real daemon: reflink clones on a loop-mounted xfs (reflink=1), copies on ext4,
the worker's own copy (overlays kept or flattened, progress to the byte, cancellation) and libvirt's
clone for conversions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import call_async, error_of, ok, wait_for
from tests.integration.storage_devices import loop_device  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

MiB = 2**20
GiB = 2**30


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def scatter(path: str, size: int, every: int) -> None:
    """1 MiB of random data every `every` bytes of a volume file, holes between."""
    with open(path, "r+b") as handle:
        for offset in range(0, size, every):
            handle.seek(offset)
            handle.write(os.urandom(MiB))


def qemu_info(path: str) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True,
                                     text=True, check=True).stdout)


def shared_extents(path: str) -> bool:
    """True when the file shares extents with another (a reflink): filefrag marks them 'shared'."""
    out = subprocess.run(["filefrag", "-v", path], capture_output=True, text=True, check=True).stdout
    return "shared" in out


def source(client, pool: str, name: str = "src.raw", size: int = 64 * MiB, every: int = 4 * MiB) -> dict:
    made = ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": size}))
    scatter(made["path"], size, every)
    return made


def fs_pool(harness, client, device: str, fmt: str) -> str:
    """A started fs pool on a device that holds the file system already; the mount point is made here
    (libvirt's build would refuse a formatted device, see tests/integration/test_block_pools_libvirt.py)."""
    name = harness.name(fmt)
    (harness.root / name).mkdir()
    ok(client.call("pool.define", {"name": name, "type": "fs", "source": {"device": [{"path": device}], "format": fmt},
                                   "target": {"path": str(harness.root / name)}, "start": True}))
    return name


def test_reflink_on_xfs_and_a_copy_on_ext4(loop_device, make_worker):
    xfs, ext4 = loop_device(512 * MiB, fs="xfs"), loop_device(256 * MiB, fs="ext4")
    harness = make_worker()
    client = harness.client()
    on_xfs, on_ext4 = fs_pool(harness, client, xfs.path, "xfs"), fs_pool(harness, client, ext4.path, "ext4")

    src = source(client, on_xfs)
    linked = ok(client.call("volume.clone", {"pool": on_xfs, "source": "src.raw", "name": "linked.raw",
                                             "reflink": True}))
    assert sha256(linked["path"]) == sha256(src["path"]) and shared_extents(linked["path"])
    auto = ok(client.call("volume.clone", {"pool": on_xfs, "source": "src.raw", "name": "auto.raw"}))
    assert sha256(auto["path"]) == sha256(src["path"]) and shared_extents(auto["path"]), "auto: reflink on xfs"
    copied = ok(client.call("volume.clone", {"pool": on_xfs, "source": "src.raw", "name": "copied.raw",
                                             "reflink": False}))
    assert sha256(copied["path"]) == sha256(src["path"]) and not shared_extents(copied["path"])

    src = source(client, on_ext4)
    message = error_of(client.call("volume.clone", {"pool": on_ext4, "source": "src.raw", "name": "linked.raw",
                                                    "reflink": True}), "failed", "unsupported")
    print(f"reflink: true on ext4: {message}")
    assert "reflink: true is not possible here" in message and "Operation not supported" in message
    assert not os.path.exists(Path(src["path"]).with_name("linked.raw"))
    assert "linked.raw" not in {v["name"] for v in ok(client.call("volume.list", {"pool": on_ext4}))["volumes"]}
    auto = ok(client.call("volume.clone", {"pool": on_ext4, "source": "src.raw", "name": "auto.raw"}))
    assert sha256(auto["path"]) == sha256(src["path"]), "auto: a copy on ext4"

    message = error_of(client.call("volume.clone", {"pool": on_ext4, "source_pool": on_xfs, "source": "src.raw",
                                                    "name": "across.raw", "reflink": True}), "failed", "unsupported")
    print(f"reflink: true across file systems: {message}")
    assert "reflink: true is not possible here" in message


def test_an_overlay_is_copied_as_an_overlay_or_flattened(harness, client, pool):
    base = source(client, pool, "base.raw", 16 * MiB)
    overlay = ok(client.call("volume.create", {"pool": pool, "name": "top.qcow2", "capacity": 16 * MiB,
                                               "format": "qcow2", "backing": {"pool": pool, "name": "base.raw"}}))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 1M 64k", overlay["path"]], check=True,
                   capture_output=True)

    kept = ok(client.call("volume.clone", {"pool": pool, "source": "top.qcow2", "name": "kept.qcow2"}))
    link = {"pool": pool, "name": "base.raw", "path": base["path"], "format": "raw"}
    assert kept["backing_chain"] == [link] and qemu_info(kept["path"])["backing-filename"] == base["path"]
    assert sha256(kept["path"]) == sha256(overlay["path"]), "a byte copy of the overlay's file"

    flat = ok(client.call("volume.clone", {"pool": pool, "source": "top.qcow2", "name": "flat.qcow2",
                                           "flatten": True}))
    assert flat["backing"] is None and flat["backing_chain"] == [] and "backing-filename" not in qemu_info(flat["path"])
    same = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", overlay["path"], flat["path"]],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr

    message = error_of(client.call("volume.clone", {"pool": pool, "source": "top.qcow2", "name": "top.raw",
                                                    "format": "raw"}), "failed", "invalid")
    print(f"conversion of an overlay without flatten: {message}")
    assert "cannot keep its backing chain" in message and "flatten: true" in message
    message = error_of(client.call("volume.clone", {"pool": pool, "source": "base.raw", "name": "base.qcow2",
                                                    "format": "qcow2", "reflink": True}), "failed", "unsupported")
    print(f"reflink: true with a conversion: {message}")
    assert "cannot make a qcow2 volume of a raw one" in message
    message = error_of(client.call("volume.clone", {"pool": pool, "source": "top.qcow2", "name": "x.qcow2",
                                                    "reflink": True, "flatten": True}), "rejected", "invalid")
    assert "cannot flatten" in message
    names = {v["name"] for v in ok(client.call("volume.list", {"pool": pool}))["volumes"]}
    assert names == {"base.raw", "top.qcow2", "kept.qcow2", "flat.qcow2"}, "the refusals made nothing"
    raw = ok(client.call("volume.clone", {"pool": pool, "source": "top.qcow2", "name": "top.raw", "format": "raw",
                                          "flatten": True}))
    same = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", overlay["path"], raw["path"]],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr


def test_the_copy_reports_progress_to_the_byte_and_is_cancelled_with_nothing_left(harness, client, pool, tap):
    src = source(client, pool, "big.raw", 2 * GiB, every=2 * MiB)  # 1 GiB of data
    before = sha256(src["path"])
    progress = tap(harness.settings.topology.events_exchange, f"{harness.host}.job.progress")
    thread, out = call_async(harness.client, "volume.clone", {"pool": pool, "source": "big.raw", "name": "c.raw",
                                                              "reflink": False}, command_id="clone-cancel-1")

    def copying():
        return [e for e in progress.bodies(wait=0.1) if e["data"]["id"] == "clone-cancel-1"
                and 0 < e["data"]["bytes_done"] < e["data"]["bytes_total"]]

    wait_for(copying, 60, "the copy to report progress")
    assert ok(client.call("job.cancel", {"id": "clone-cancel-1"}))["state"] == "cancelling"
    thread.join(120)
    message = error_of(out[0], "cancelled", "cancelled")
    print(f"cancelled clone: {message}")
    assert message.startswith(f"volume.clone of {pool}/big.raw into volume 'c.raw' in pool '{pool}' cancelled by "
                              f"job.cancel after ") and message.endswith(f"of {2 * GiB} bytes; the partial volume "
                                                                         f"was removed")
    assert not os.path.exists(Path(src["path"]).with_name("c.raw"))
    assert "c.raw" not in {v["name"] for v in ok(client.call("volume.list", {"pool": pool}))["volumes"]}
    assert sha256(src["path"]) == before

    done = ok(client.call("volume.clone", {"pool": pool, "source": "big.raw", "name": "c.raw", "reflink": False},
                          command_id="clone-whole-1", timeout=300))
    assert sha256(done["path"]) == before
    events = [e["data"] for e in progress.bodies(wait=1.0) if e["data"]["id"] == "clone-whole-1"]
    assert events and all(e["bytes_total"] == 2 * GiB for e in events)
    assert [e["bytes_done"] for e in events] == sorted(e["bytes_done"] for e in events)
    assert events[-1]["bytes_done"] == 2 * GiB


def test_a_copy_a_killed_worker_left_unfinished_is_made_again(harness, client, pool):
    src = source(client, pool)
    # What a worker killed in the middle of its copy leaves: the clone's volume, holding part of the data.
    partial = ok(client.call("volume.create", {"pool": pool, "name": "half.raw", "capacity": 64 * MiB}))
    with open(src["path"], "rb") as whole, open(partial["path"], "r+b") as half:
        half.write(whole.read(8 * MiB))
    harness.worker.volume_records.copy_started(pool, "half.raw", "killed-clone-1")
    made = ok(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "half.raw", "reflink": False}))
    assert made["changed"] is True and sha256(made["path"]) == sha256(src["path"])
    assert harness.worker.volume_records.unfinished_copy(pool, "half.raw") is None
    again = ok(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "half.raw"}))
    assert again["changed"] is False


def test_a_conversion_libvirt_runs_honours_a_cancel_when_it_returns(harness, client, pool, libvirt_conn):
    source(client, pool, "conv.raw", GiB, every=2 * MiB)
    thread, out = call_async(harness.client, "volume.clone", {"pool": pool, "source": "conv.raw",
                                                              "name": "conv.qcow2", "format": "qcow2"},
                             command_id="convert-cancel-1")
    handle = libvirt_conn.storagePoolLookupByName(pool)

    wait_for(lambda: "conv.qcow2" in handle.listVolumes(), 60, "libvirt to start the conversion")
    assert ok(client.call("job.cancel", {"id": "convert-cancel-1"}))["state"] == "cancelling"
    thread.join(300)
    message = error_of(out[0], "cancelled", "cancelled")
    print(f"cancelled conversion: {message}")
    assert "libvirt cannot stop a clone libvirt makes" in message and "the new volume was removed" in message
    with pytest.raises(libvirt.libvirtError):
        handle.storageVolLookupByName("conv.qcow2")
