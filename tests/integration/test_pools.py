"""Pool lifecycle through the whole path: broker -> worker -> real libvirtd -> result."""

from __future__ import annotations

import os

import libvirt
import pytest

from tests.integration.conftest import error_of, ok

pytestmark = pytest.mark.integration


def dir_pool(harness, name, **extra):
    return {"name": name, "type": "dir", "target": {"path": str(harness.root / name)}, **extra}


def test_define_build_start_autostart_then_converges(harness, client, libvirt_conn):
    name = harness.name("pool")
    first = ok(client.call("pool.define", dir_pool(harness, name, build=True, start=True, autostart=True)))
    assert first["changed"] is True
    assert first["state"] == "running" and first["persistent"] is True and first["autostart"] is True
    assert first["target_path"] == str(harness.root / name) and first["type"] == "dir"
    assert os.path.isdir(harness.root / name)
    pool = libvirt_conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart()

    again = ok(client.call("pool.define", dir_pool(harness, name, build=True, start=True, autostart=True)))
    assert again["changed"] is False
    assert again["uuid"] == first["uuid"]


def test_define_with_another_spec_is_a_conflict(harness, client):
    name = harness.name("pool")
    ok(client.call("pool.define", dir_pool(harness, name)))
    other = dict(dir_pool(harness, name), target={"path": str(harness.root / "elsewhere")})
    message = error_of(client.call("pool.define", other), "failed", "conflict")
    assert "target.path" in message and "elsewhere" in message


def test_define_outside_allowed_roots_is_forbidden_and_defines_nothing(harness, client, libvirt_conn):
    name = harness.name("pool")
    result = client.call("pool.define", {"name": name, "type": "dir", "target": {"path": "/srv/not-allowed"}})
    message = error_of(result, "rejected", "forbidden")
    assert "/srv/not-allowed" in message
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]


def test_failed_build_leaves_no_definition(harness, client, libvirt_conn):
    name = harness.name("pool")
    blocker = harness.root / name
    blocker.write_text("a file where the pool directory should be")
    result = client.call("pool.define", dir_pool(harness, name, build=True, start=True))
    assert result.status.value == "failed"
    assert result.error.libvirt is not None
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]


def test_stop_start_refresh_info_list(harness, client, pool):
    stopped = ok(client.call("pool.stop", {"name": pool}))
    assert stopped["state"] == "inactive" and stopped["changed"] is True
    assert ok(client.call("pool.stop", {"name": pool}))["changed"] is False
    assert pool in [p["name"] for p in ok(client.call("pool.list", {"state": "inactive"}))["pools"]]
    assert pool not in [p["name"] for p in ok(client.call("pool.list", {"state": "active"}))["pools"]]
    error_of(client.call("pool.refresh", {"name": pool}), "failed", "invalid")

    started = ok(client.call("pool.start", {"name": pool}))
    assert started["state"] == "running" and started["changed"] is True
    assert ok(client.call("pool.start", {"name": pool}))["changed"] is False
    refreshed = ok(client.call("pool.refresh", {"name": pool}))
    assert refreshed["capacity"] > 0 and refreshed["available"] <= refreshed["capacity"]
    info = ok(client.call("pool.info", {"name": pool}))
    assert info["name"] == pool and info["state"] == "running"
    assert pool in [p["name"] for p in ok(client.call("pool.list", {}))["pools"]]


def test_autostart_toggles_and_converges(harness, client, pool, libvirt_conn):
    assert ok(client.call("pool.autostart", {"name": pool, "enabled": True}))["changed"] is True
    assert libvirt_conn.storagePoolLookupByName(pool).autostart() == 1
    assert ok(client.call("pool.autostart", {"name": pool, "enabled": True}))["changed"] is False
    assert ok(client.call("pool.autostart", {"name": pool, "enabled": False}))["autostart"] is False


def test_build_start_with_build_delete_undefine(harness, client, libvirt_conn):
    name = harness.name("pool")
    ok(client.call("pool.define", dir_pool(harness, name)))
    assert not os.path.exists(harness.root / name)
    assert ok(client.call("pool.build", {"name": name}))["changed"] is True
    assert os.path.isdir(harness.root / name)
    message = error_of(client.call("pool.build", {"name": name, "overwrite": True}), "failed", "invalid")
    assert "dir pool" in message
    os.rmdir(harness.root / name)
    assert ok(client.call("pool.start", {"name": name, "build": True}))["state"] == "running"
    assert os.path.isdir(harness.root / name)

    message = error_of(client.call("pool.delete", {"name": name}), "failed", "invalid")
    assert "running" in message
    message = error_of(client.call("pool.undefine", {"name": name}), "failed", "invalid")
    assert "running" in message

    ok(client.call("pool.stop", {"name": name}))
    assert ok(client.call("pool.delete", {"name": name}))["changed"] is True
    assert not os.path.exists(harness.root / name)
    assert ok(client.call("pool.delete", {"name": name}))["changed"] is False
    assert ok(client.call("pool.undefine", {"name": name})) == {"name": name, "changed": True}
    assert ok(client.call("pool.undefine", {"name": name})) == {"name": name, "changed": False}
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.storagePoolLookupByName(name)


@pytest.mark.parametrize("op", ["pool.info", "pool.start", "pool.stop", "pool.build", "pool.refresh",
                                "pool.delete"])
def test_missing_pool_is_not_found_with_its_name(harness, client, op):
    name = harness.name("missing")
    message = error_of(client.call(op, {"name": name}), "failed", "not_found")
    assert name in message


def test_host_info_lists_supported_pool_types(harness, client, libvirt_conn):
    info = ok(client.call("host.info", {}))
    assert info["host_id"] == harness.host
    assert info["uri"] == libvirt_conn.getURI()
    assert "dir" in info["pool_types"]
    major = libvirt_conn.getLibVersion() // 1_000_000
    assert info["libvirt_version"].startswith(f"{major}.")


def test_define_of_a_type_without_backend_is_unsupported(harness, client, libvirt_conn):
    from worker.virt.describe import supported_pool_types

    missing = sorted({"rbd", "gluster", "zfs", "vstorage", "sheepdog"} - set(supported_pool_types(libvirt_conn)))
    assert missing, "this test needs a pool type the daemon has no backend for"
    args = {"rbd": {"source": {"host": [{"name": "ceph1"}], "name": "rbdpool"}},
            "gluster": {"source": {"host": [{"name": "gl1"}], "name": "vol"}},
            "zfs": {"source": {"name": "tank"}}, "vstorage": {"source": {"name": "cluster"},
                                                             "target": {"path": str(harness.root / "vs")}},
            "sheepdog": {"source": {"host": [{"name": "sd1"}], "name": "sd"}}}[missing[0]]
    name = harness.name("pool")
    message = error_of(client.call("pool.define", {"name": name, "type": missing[0], **args}), "failed", "unsupported")
    assert missing[0] in message
    assert name not in [p.name() for p in libvirt_conn.listAllStoragePools(0)]
