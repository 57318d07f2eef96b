"""Backing chains on the real daemon: volume.create with backing, volume.info and volume.list report
every link to the root, across pools and beyond them; a link is not deleted under what is built on
it."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import error_of, ok

pytestmark = pytest.mark.integration

MiB = 2**20


def link(pool: str | None, name: str | None, path: str, fmt: str) -> dict:
    return {"pool": pool, "name": name, "path": path, "format": fmt}


def test_create_info_and_list_report_the_chain_to_its_root(harness, client, pool):
    other = harness.running_pool(client)
    base = ok(client.call("volume.create", {"pool": pool, "name": "base.raw", "capacity": 16 * MiB}))
    mid = ok(client.call("volume.create", {"pool": pool, "name": "mid.qcow2", "capacity": 16 * MiB, "format": "qcow2",
                                           "backing": {"pool": pool, "name": "base.raw"}}))
    top = ok(client.call("volume.create", {"pool": other, "name": "top.qcow2", "capacity": 16 * MiB,
                                           "format": "qcow2", "backing": {"pool": pool, "name": "mid.qcow2"}}))
    chain = [link(pool, "mid.qcow2", mid["path"], "qcow2"), link(pool, "base.raw", base["path"], "raw")]
    assert (top["backing"], top["backing_chain"]) == (chain[0], chain)
    assert mid["backing_chain"] == chain[1:] and base["backing_chain"] == [] and base["backing"] is None

    info = ok(client.call("volume.info", {"pool": other, "name": "top.qcow2"}))
    assert (info["backing"], info["backing_chain"]) == (chain[0], chain)
    listed = {v["name"]: v["backing_chain"] for v in ok(client.call("volume.list", {"pool": pool}))["volumes"]}
    assert listed == {"base.raw": [], "mid.qcow2": chain[1:]}

    again = ok(client.call("volume.create", {"pool": other, "name": "top.qcow2", "capacity": 16 * MiB,
                                             "format": "qcow2", "backing": {"pool": pool, "name": "mid.qcow2"}}))
    assert again["changed"] is False and again["backing_chain"] == chain

    before = hashlib.sha256(Path(mid["path"]).read_bytes()).hexdigest()
    message = error_of(client.call("volume.delete", {"pool": pool, "name": "mid.qcow2"}), "failed", "in_use")
    assert f"volumes are built on it: volume 'top.qcow2' of pool '{other}'" in message
    assert hashlib.sha256(Path(mid["path"]).read_bytes()).hexdigest() == before


def test_a_link_that_is_no_pools_volume_ends_the_chain_with_its_path(harness, client, pool, tmp_path):
    outside = tmp_path / "outside.raw"
    outside.write_bytes(bytes(MiB))
    made = ok(client.call("volume.create", {"pool": pool, "name": "placeholder.raw", "capacity": MiB}))
    overlay = str(Path(made["path"]).with_name("foreign.qcow2"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(outside), overlay, "1M"],
                   check=True)
    ok(client.call("pool.refresh", {"name": pool}))
    info = ok(client.call("volume.info", {"pool": pool, "name": "foreign.qcow2"}))
    assert info["backing_chain"] == [link(None, None, str(outside), "raw")]
    assert info["backing"] == link(None, None, str(outside), "raw")
