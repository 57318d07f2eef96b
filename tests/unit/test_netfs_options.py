"""netfs pool.define's protocol_version and mount_options: what is accepted, and the XML written for
libvirt (checked against its storagepool.rng) and read back for comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from pydantic import ValidationError

from messages.errors import describe
from messages.pools import PoolDefineArgs
from tests.conftest import require
from worker.virt import pool_xml

SCHEMA = Path("/usr/share/libvirt/schemas/storagepool.rng")
FS = "{http://libvirt.org/schemas/storagepool/fs/1.0}"


def netfs(**changes) -> dict:
    source = {"host": [{"name": "nfs.example.com"}], "dir": "/export/images", "format": "nfs",
              "protocol_version": "4.1", **changes.pop("source", {})}
    return {"name": "p1", "type": "netfs", "target": {"path": "/var/lib/libvirt/images/p"}, "source": source,
            "mount_options": ["sync", "lazytime", "rsize=65536", "sec=krb5p"], **changes}


def refused(document: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        PoolDefineArgs.model_validate(document)
    return describe(caught.value, "args")


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    require(SCHEMA.exists(), f"libvirt's RelaxNG schemas are not installed ({SCHEMA})")
    return etree.RelaxNG(file=str(SCHEMA))


def test_xml_carries_the_protocol_and_the_options_in_libvirts_namespace(schema):
    root = etree.fromstring(pool_xml.build(PoolDefineArgs.model_validate(netfs())))
    assert root.find("source/protocol").get("ver") == "4.1"
    assert [o.get("name") for o in root.findall(f"{FS}mount_opts/{FS}option")] == \
        ["sync", "lazytime", "rsize=65536", "sec=krb5p"]
    assert root.nsmap == {"fs": "http://libvirt.org/schemas/storagepool/fs/1.0"}
    assert schema.validate(root), schema.error_log


def test_read_back_in_the_shape_of_the_arguments():
    args = PoolDefineArgs.model_validate(netfs())
    held = pool_xml.read_spec(pool_xml.build(args))
    assert held["source"]["protocol_version"] == "4.1"
    assert held["mount_options"] == ["sync", "lazytime", "rsize=65536", "sec=krb5p"]
    wanted = args.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    assert pool_xml.differences(wanted, held) == []
    other = PoolDefineArgs.model_validate(netfs(mount_options=["sync"], source={"protocol_version": "3"}))
    assert pool_xml.differences(other.model_dump(mode="json", exclude_none=True, exclude_defaults=True), held) == [
        "source.protocol_version is '4.1' on the host, the command asks for '3'",
        "mount_options is ['sync', 'lazytime', 'rsize=65536', 'sec=krb5p'] on the host, the command asks for ['sync']"]


def test_without_options_no_namespace_and_nothing_read(schema):
    args = PoolDefineArgs.model_validate(netfs(mount_options=None, source={"protocol_version": None}))
    root = etree.fromstring(pool_xml.build(args))
    assert root.nsmap == {} and root.find("source/protocol") is None
    assert schema.validate(root), schema.error_log
    held = pool_xml.read_spec(pool_xml.build(args))
    assert "mount_options" not in held and "protocol_version" not in held["source"]


@pytest.mark.parametrize("version", ["3", "4", "4.0", "4.1", "4.2"])
def test_protocol_versions(version):
    assert PoolDefineArgs.model_validate(netfs(source={"protocol_version": version})).source.protocol_version == version


@pytest.mark.parametrize("version", ["", "v4", "4.1.1", "04", "4,sync", 4])
def test_protocol_versions_refused(version):
    assert "args.source.protocol_version" in refused(netfs(source={"protocol_version": version}))


def test_protocol_version_only_for_nfs():
    message = refused(netfs(source={"format": "cifs", "dir": "share"}))
    assert "a netfs pool of format 'cifs' takes none" in message
    assert PoolDefineArgs.model_validate(netfs(source={"format": "auto"})).source.protocol_version == "4.1"
    assert PoolDefineArgs.model_validate(netfs(source={"format": None})).source.protocol_version == "4.1"


@pytest.mark.parametrize("option, said", [
    ("exec", "would undo libvirt's nodev,nosuid,noexec"),
    ("suid", "would undo libvirt's nodev,nosuid,noexec"),
    ("dev", "would undo libvirt's nodev,nosuid,noexec"),
    ("nfsvers=3", "give the NFS version as source.protocol_version"),
    ("vers=4", "give the NFS version as source.protocol_version"),
    ("sync,exec", "args.mount_options[0]"),
    ("no space", "args.mount_options[0]"),
    ("-o", "args.mount_options[0]"),
    ("", "args.mount_options[0]"),
])
def test_mount_options_refused(option, said):
    assert said in refused(netfs(mount_options=[option]))


def test_mount_options_once_each_and_at_most_64():
    assert "lists an option twice" in refused(netfs(mount_options=["sync", "sync"]))
    assert "args.mount_options" in refused(netfs(mount_options=[f"o{i}" for i in range(65)]))
    assert len(PoolDefineArgs.model_validate(netfs(mount_options=[f"o{i}" for i in range(64)])).mount_options) == 64


@pytest.mark.parametrize("kind, extra", [
    ("dir", {}),
    ("fs", {"source": {"device": [{"path": "/dev/sdb1"}]}}),
])
def test_other_pool_types_take_neither(kind, extra):
    document = {"name": "p1", "type": kind, "target": {"path": "/var/lib/libvirt/images/p"}, **extra,
                "mount_options": ["sync"]}
    assert f"a {kind} pool takes no mount_options" in refused(document)
    if kind == "fs":
        document = {**document, "mount_options": None,
                    "source": {"device": [{"path": "/dev/sdb1"}], "protocol_version": "4"}}
        assert "a fs pool takes no source.protocol_version" in refused(document)
