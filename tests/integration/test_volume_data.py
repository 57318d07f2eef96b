"""clone, resize and wipe on the real daemon, checked with virsh, qemu-img and the files themselves."""

from __future__ import annotations

from datetime import datetime

import hashlib
import os
import subprocess

import pytest

from tests.integration.conftest import call_async, error_of, ok, wait_for

pytestmark = pytest.mark.integration

MiB = 2**20
GiB = 2**30


def sha256(path: str, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        left = size if size is not None else os.path.getsize(path)
        while left > 0:
            chunk = handle.read(min(left, 4 * MiB))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def scatter(path: str, size: int, every: int = 8 * MiB) -> None:
    """Write 1 MiB of random data every `every` bytes of a volume file."""
    with open(path, "r+b") as handle:
        for offset in range(0, size, every):
            handle.seek(offset)
            handle.write(os.urandom(MiB))


def vol_info(pool: str, name: str) -> dict[str, str]:
    out = subprocess.run(["virsh", "vol-info", "--bytes", "--pool", pool, name], capture_output=True, text=True,
                         check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def source_volume(client, pool, name="src.raw", size=64 * MiB):
    made = ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": size}))
    scatter(made["path"], size)
    return made


def test_clone_in_the_same_pool_copies_the_content(client, pool):
    src = source_volume(client, pool)
    made = ok(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "copy.raw"}))
    assert made["changed"] is True and made["capacity"] == src["capacity"] and made["format"] == "raw"
    assert sha256(made["path"]) == sha256(src["path"])
    again = ok(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "copy.raw"}))
    assert again["changed"] is False


def test_clone_converts_raw_to_qcow2_across_pools_with_a_larger_capacity(harness, client, pool):
    src = source_volume(client, pool)
    other = harness.name("pool")
    ok(client.call("pool.define", {"name": other, "type": "dir", "target": {"path": str(harness.root / other)},
                                   "build": True, "start": True}))
    made = ok(client.call("volume.clone", {"pool": other, "source_pool": pool, "source": "src.raw",
                                           "name": "copy.qcow2", "format": "qcow2", "capacity": 128 * MiB}))
    assert made["pool"] == other and made["format"] == "qcow2" and made["capacity"] == 128 * MiB
    info = subprocess.run(["qemu-img", "info", made["path"]], capture_output=True, text=True, check=True).stdout
    assert "file format: qcow2" in info
    # The first 64 MiB hold the source's bytes, the rest reads as zeros.
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src["path"], made["path"]],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_clone_refusals(client, pool):
    source_volume(client, pool)
    message = error_of(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "small.raw",
                                                    "capacity": MiB}), "failed", "invalid")
    assert str(MiB) in message and str(64 * MiB) in message
    ok(client.call("volume.create", {"pool": pool, "name": "taken.qcow2", "capacity": MiB, "format": "qcow2"}))
    error_of(client.call("volume.clone", {"pool": pool, "source": "src.raw", "name": "taken.qcow2"}),
             "failed", "conflict")
    assert "'ghost'" in error_of(client.call("volume.clone", {"pool": pool, "source": "ghost", "name": "x"}),
                                 "failed", "not_found")


def test_clone_reports_progress_about_once_a_second(harness, client, pool, tap):
    src = ok(client.call("volume.create", {"pool": pool, "name": "big.raw", "capacity": 2 * GiB}))
    scatter(src["path"], 2 * GiB, every=2 * MiB)  # 1 GiB of data to copy
    progress = tap(harness.settings.topology.events_exchange, f"{harness.host}.job.progress")
    result = client.call("volume.clone", {"pool": pool, "source": "big.raw", "name": "big-copy.raw"},
                         command_id="clone-progress-1", timeout=120)
    ok(result)
    seconds = (result.finished_at - result.started_at).total_seconds()
    events = [e for e in progress.bodies(wait=1.0) if e["data"]["id"] == "clone-progress-1"]
    # At most about one a second (the promise); and reported all along, though a busy machine may
    # stretch a single chunk of the copy over a few seconds.
    assert max(1, int(seconds) // 4) <= len(events) <= int(seconds) + 2, (seconds, events)
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in events]
    assert all((later - earlier).total_seconds() >= 0.9 for earlier, later in zip(times, times[1:-1])), times
    done = [e["data"]["bytes_done"] for e in events]
    assert done == sorted(done) and done[-1] == events[-1]["data"]["bytes_total"]
    assert all(e["commandid"] == "clone-progress-1" and e["data"]["op"] == "volume.clone" for e in events)


def test_resize_grows_shrinks_only_when_asked_and_never_below_allocation(client, pool):
    ok(client.call("volume.create", {"pool": pool, "name": "r.raw", "capacity": 64 * MiB}))
    grown = ok(client.call("volume.resize", {"pool": pool, "name": "r.raw", "capacity": 128 * MiB}))
    assert grown["capacity"] == 128 * MiB and grown["changed"] is True
    assert vol_info(pool, "r.raw")["Capacity"] == f"{128 * MiB} bytes"
    assert ok(client.call("volume.resize", {"pool": pool, "name": "r.raw", "capacity": 128 * MiB}))["changed"] is False

    message = error_of(client.call("volume.resize", {"pool": pool, "name": "r.raw", "capacity": 32 * MiB}),
                       "failed", "invalid")
    assert "shrink" in message and str(32 * MiB) in message
    shrunk = ok(client.call("volume.resize", {"pool": pool, "name": "r.raw", "capacity": 32 * MiB, "shrink": True}))
    assert shrunk["capacity"] == 32 * MiB
    assert vol_info(pool, "r.raw")["Capacity"] == f"{32 * MiB} bytes"

    full = ok(client.call("volume.create", {"pool": pool, "name": "full.raw", "capacity": 16 * MiB,
                                            "allocation": 16 * MiB}))
    result = client.call("volume.resize", {"pool": pool, "name": "full.raw", "capacity": 4 * MiB, "shrink": True})
    assert "allocation" in error_of(result, "failed", "invalid")
    assert result.error.libvirt is not None
    assert os.path.getsize(full["path"]) == 16 * MiB


def test_resize_with_allocate_allocates_the_new_space(client, pool):
    ok(client.call("volume.create", {"pool": pool, "name": "a.raw", "capacity": 8 * MiB}))
    grown = ok(client.call("volume.resize", {"pool": pool, "name": "a.raw", "capacity": 32 * MiB, "allocate": True}))
    assert grown["allocation"] >= 24 * MiB


@pytest.mark.parametrize("algorithm", ["zero", "nnsa"])
def test_wipe_overwrites_the_data(client, pool, algorithm):
    made = ok(client.call("volume.create", {"pool": pool, "name": "w.raw", "capacity": 4 * MiB,
                                            "allocation": 4 * MiB}))
    with open(made["path"], "r+b") as handle:
        handle.write(b"confidential" * 10000)
    wiped = ok(client.call("volume.wipe", {"pool": pool, "name": "w.raw", "algorithm": algorithm}))
    assert wiped["changed"] is True
    data = open(made["path"], "rb").read()
    assert b"confidential" not in data
    assert len(data) == 4 * MiB
    if algorithm == "zero":
        assert data.count(0) == len(data)
    assert vol_info(pool, "w.raw")["Capacity"] == f"{4 * MiB} bytes"


def test_wipe_algorithm_the_backend_lacks_is_unsupported(client, pool):
    ok(client.call("volume.create", {"pool": pool, "name": "t.raw", "capacity": MiB}))
    message = error_of(client.call("volume.wipe", {"pool": pool, "name": "t.raw", "algorithm": "trim"}),
                       "failed", "unsupported")
    assert "trim" in message


def test_wipe_reports_progress_and_is_not_cancellable(harness, client, pool, tap):
    # Four passes (scrub's nnsa): a single zero pass can land in the page cache in under a second and
    # spend the rest in fdatasync with the offset at the end, leaving no sample in the middle.
    ok(client.call("volume.create", {"pool": pool, "name": "slow.raw", "capacity": 512 * MiB,
                                     "allocation": 512 * MiB}))
    progress = tap(harness.settings.topology.events_exchange, f"{harness.host}.job.progress")
    thread, out = call_async(harness.client, "volume.wipe", {"pool": pool, "name": "slow.raw", "algorithm": "nnsa"},
                             command_id="wipe-1")
    wait_for(lambda: harness.worker.scheduler.counts()[1] == 1, 10, "the wipe to start")
    answer = ok(client.call("job.cancel", {"id": "wipe-1"}))
    assert answer == {"id": "wipe-1", "state": "not_cancellable"}
    thread.join(120)
    assert ok(out[0])["changed"] is True, "the wipe ran to its end"
    events = [e["data"] for e in progress.bodies(wait=1.0) if e["data"]["id"] == "wipe-1"]
    assert len(events) >= 2, events
    assert events[-1]["bytes_done"] == events[-1]["bytes_total"] == 2 * GiB
    assert any(0 < e["bytes_done"] < 2 * GiB for e in events), "an event in the middle of the wipe"
