"""volume.resize of a volume a running (TCG) domain has: grown through the domain, so the guest sees
the new capacity — checked on the running domain itself (virDomainGetBlockInfo), not on the file."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.conftest import error_of, ok
from tests.integration.domains import domains, file_disk, guest_root, volume_disk  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

MiB = 2**20


@pytest.fixture
def harness(guest_root, make_worker):
    return make_worker(allowed_roots=[str(guest_root)])


@pytest.fixture
def pool(harness, client, guest_root) -> str:
    name = harness.name("pool")
    ok(client.call("pool.define", {"name": name, "type": "dir", "target": {"path": str(guest_root / name)},
                                   "build": True, "start": True}))
    return name


def virtual_size(path: str) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["virtual-size"]


def test_growing_a_running_guests_disk_goes_through_the_domain(harness, client, pool, domains):
    raw = ok(client.call("volume.create", {"pool": pool, "name": "g.raw", "capacity": 16 * MiB}))
    qcow = ok(client.call("volume.create", {"pool": pool, "name": "g.qcow2", "capacity": 16 * MiB,
                                            "format": "qcow2"}))
    dom = harness.name("dom")
    domains.define(dom, [volume_disk(pool, "g.raw", "vdb"), file_disk(qcow["path"], "vdc", driver="qcow2")])
    running = domains.start(dom)
    assert running.blockInfo("vdb")[0] == running.blockInfo("vdc")[0] == 16 * MiB

    grown = ok(client.call("volume.resize", {"pool": pool, "name": "g.raw", "capacity": 48 * MiB}))
    assert (grown["capacity"], grown["online"], grown["changed"], grown["in_use_by"]) == (48 * MiB, True, True, [dom])
    assert running.blockInfo("vdb")[0] == 48 * MiB, "the guest sees the new capacity"
    assert ok(client.call("volume.info", {"pool": pool, "name": "g.raw"}))["capacity"] == 48 * MiB

    grown = ok(client.call("volume.resize", {"pool": pool, "name": "g.qcow2", "capacity": 40 * MiB}))
    assert (grown["capacity"], grown["online"]) == (40 * MiB, True)
    assert running.blockInfo("vdc")[0] == 40 * MiB
    assert virtual_size(qcow["path"]) == 40 * MiB

    again = ok(client.call("volume.resize", {"pool": pool, "name": "g.raw", "capacity": 48 * MiB}))
    assert (again["changed"], again["online"]) == (False, False)

    def state() -> tuple:
        return (running.blockInfo("vdb")[0], os.path.getsize(raw["path"]), os.stat(raw["path"]).st_blocks,
                domains.xml(dom))

    before = state()
    message = error_of(client.call("volume.resize", {"pool": pool, "name": "g.raw", "capacity": 64 * MiB,
                                                     "allocate": True}), "failed", "invalid")
    print(f"allocate with online growth: {message}")
    assert "allocate: false" in message and dom in message
    assert state() == before


def test_a_volume_no_running_domain_has_is_grown_by_libvirt(harness, client, pool, domains):
    ok(client.call("volume.create", {"pool": pool, "name": "o.raw", "capacity": 16 * MiB}))
    dom = harness.name("dom")
    domains.define(dom, [volume_disk(pool, "o.raw", "vdb")])
    grown = ok(client.call("volume.resize", {"pool": pool, "name": "o.raw", "capacity": 32 * MiB}))
    assert (grown["capacity"], grown["online"], grown["in_use_by"]) == (32 * MiB, False, [dom])
    running = domains.start(dom)
    assert running.blockInfo("vdb")[0] == 32 * MiB
