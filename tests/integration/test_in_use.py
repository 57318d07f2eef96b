"""In-use protection on the real daemon with real (TCG) domains: delete, wipe, shrink and upload of a
volume that a domain or another volume uses are refused `in_use`, and every refusal is checked to
have changed nothing — the volume's bytes and size, and the domains' XML."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def filled(client, pool: str, name: str, fmt: str = "raw", size: int = 16 * MiB) -> dict:
    made = ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": size, "format": fmt}))
    if fmt == "raw":
        with open(made["path"], "r+b") as handle:
            handle.write(os.urandom(MiB))
    return made


def state(paths: list[str], domains, names: list[str]) -> tuple:
    """What a refusal must leave as it was: each file's bytes and size, each domain's XML."""
    files = [(hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.path.getsize(p)) for p in paths]
    return files, [domains.xml(name) for name in names]


def refusals(client, pool: str, name: str, source: Path, *, force: bool = False) -> dict[str, str]:
    """The message of each of the four guarded operations on the volume, each failed `in_use`."""
    extra = {"force": True} if force else {}
    calls = {
        "volume.delete": {"pool": pool, "name": name, **extra},
        "volume.wipe": {"pool": pool, "name": name, **extra},
        "volume.resize": {"pool": pool, "name": name, "capacity": 8 * MiB, "shrink": True, **extra},
        "volume.upload": {"pool": pool, "name": name, "source": {"path": str(source)}, **extra},
    }
    return {op: error_of(client.call(op, args), "failed", "in_use") for op, args in calls.items()}


def upload_source(root: Path) -> Path:
    source = root / "new-content.raw"
    source.write_bytes(os.urandom(2 * MiB))
    return source


def test_a_volume_in_a_stopped_domains_definition_is_refused_unless_forced(harness, client, pool, guest_root,
                                                                           domains):
    used = filled(client, pool, "used.raw")
    filled(client, pool, "free.raw")
    dom = harness.name("dom")
    domains.define(dom, [volume_disk(pool, "used.raw", "vdb")])
    source = upload_source(guest_root)

    assert ok(client.call("volume.info", {"pool": pool, "name": "used.raw"}))["in_use_by"] == [dom]
    listed = {v["name"]: v["in_use_by"] for v in ok(client.call("volume.list", {"pool": pool}))["volumes"]}
    assert listed == {"used.raw": [dom], "free.raw": []}

    before = state([used["path"]], domains, [dom])
    messages = refusals(client, pool, "used.raw", source)
    for op, message in messages.items():
        print(f"{op}: {message}")
        assert message.startswith(f"volume 'used.raw' of pool '{pool}' is in use: domain '{dom}' (not running) "
                                  f"has it in its definition; nothing was "), message
        assert "Detach it first, or send force: true" in message
    assert "nothing was deleted" in messages["volume.delete"]
    assert "nothing was overwritten" in messages["volume.upload"]
    assert "nothing was shrunk" in messages["volume.resize"]
    assert state([used["path"]], domains, [dom]) == before

    grown = ok(client.call("volume.resize", {"pool": pool, "name": "used.raw", "capacity": 32 * MiB}))
    assert grown["capacity"] == 32 * MiB and grown["online"] is False
    wiped = ok(client.call("volume.wipe", {"pool": pool, "name": "used.raw", "force": True}))
    assert wiped["in_use_by"] == [dom]
    assert Path(used["path"]).read_bytes() == bytes(32 * MiB)
    assert ok(client.call("volume.delete", {"pool": pool, "name": "used.raw", "force": True}))["changed"] is True
    assert not os.path.exists(used["path"])
    assert domains.xml(dom) == before[1][0], "force leaves the domain naming what is gone"


def test_a_disk_that_names_the_volume_by_path_counts_too(harness, client, pool, guest_root, domains):
    used = filled(client, pool, "by-path.raw")
    dom = harness.name("dom")
    domains.define(dom, [file_disk(used["path"], "vdc")])
    before = state([used["path"]], domains, [dom])
    message = error_of(client.call("volume.delete", {"pool": pool, "name": "by-path.raw"}), "failed", "in_use")
    assert f"domain '{dom}' (not running) has it in its definition" in message
    assert state([used["path"]], domains, [dom]) == before
    assert ok(client.call("volume.info", {"pool": pool, "name": "by-path.raw"}))["in_use_by"] == [dom]


def test_a_running_guests_disk_is_never_touched_even_with_force(harness, client, pool, guest_root, domains):
    used = filled(client, pool, "live.raw")
    dom = harness.name("dom")
    domains.define(dom, [volume_disk(pool, "live.raw", "vdb")])
    running = domains.start(dom)
    source = upload_source(guest_root)
    before = state([used["path"]], domains, [dom])
    messages = refusals(client, pool, "live.raw", source, force=True)
    for op, message in messages.items():
        print(f"{op}: {message}")
        assert f"domain '{dom}' is running with it" in message
        assert "never" in message and "with force or without" in message
    assert state([used["path"]], domains, [dom]) == before
    assert running.blockInfo("vdb")[0] == 16 * MiB


def test_a_volume_other_volumes_are_built_on_is_in_use(harness, client, pool, guest_root, domains):
    base = filled(client, pool, "base.raw")
    overlay = ok(client.call("volume.create", {"pool": pool, "name": "top.qcow2", "capacity": 16 * MiB,
                                               "format": "qcow2", "backing": {"pool": pool, "name": "base.raw"}}))
    upper = ok(client.call("volume.create", {"pool": pool, "name": "upper.qcow2", "capacity": 16 * MiB,
                                             "format": "qcow2", "backing": {"pool": pool, "name": "top.qcow2"}}))
    source = upload_source(guest_root)
    files = [base["path"], overlay["path"], upper["path"]]
    before = state(files, domains, [])
    messages = refusals(client, pool, "base.raw", source)
    for op, message in messages.items():
        print(f"{op}: {message}")
        assert (f"is in use: volumes are built on it: volume 'top.qcow2' of pool '{pool}', "
                f"volume 'upper.qcow2' of pool '{pool}'; nothing was ") in message, message
        assert "Remove the volumes built on it first, or send force: true" in message
    assert state(files, domains, []) == before

    dom = harness.name("dom")
    domains.define(dom, [volume_disk(pool, "upper.qcow2", "vdb", driver="qcow2")])
    message = error_of(client.call("volume.delete", {"pool": pool, "name": "base.raw"}), "failed", "in_use")
    assert (f"domain '{dom}' (not running) has volume 'upper.qcow2' of pool '{pool}', which is built on it, "
            f"in its definition") in message, message
    domains.start(dom)
    before = state(files, domains, [dom])
    message = error_of(client.call("volume.delete", {"pool": pool, "name": "base.raw", "force": True}),
                       "failed", "in_use")
    print(f"volume.delete (force, chain of a running guest): {message}")
    assert message.startswith(f"volume 'base.raw' of pool '{pool}' is in use: domain '{dom}' is running with it; "
                              f"volumes are built on it: "), message
    assert "never deleted" in message
    assert state(files, domains, [dom]) == before
    # The running guest has the whole chain; volume.info names it for every link.
    for name in ("base.raw", "top.qcow2", "upper.qcow2"):
        assert ok(client.call("volume.info", {"pool": pool, "name": name}))["in_use_by"] == [dom]


def test_an_overlay_made_outside_the_worker_a_moment_ago_counts(harness, client, pool, libvirt_conn):
    """The worker's view of the volumes has not seen it yet: the look reads it from libvirt."""
    base = filled(client, pool, "base.raw")
    libvirt_conn.storagePoolLookupByName(pool).createXML(
        f"<volume><name>outside.qcow2</name><capacity>{16 * MiB}</capacity><target><format type='qcow2'/></target>"
        f"<backingStore><path>{base['path']}</path><format type='raw'/></backingStore></volume>", 0)
    before = state([base["path"]], None, [])
    message = error_of(client.call("volume.delete", {"pool": pool, "name": "base.raw"}), "failed", "in_use")
    assert f"volumes are built on it: volume 'outside.qcow2' of pool '{pool}'" in message
    assert state([base["path"]], None, []) == before
