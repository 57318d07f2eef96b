"""Pool XML for every pool type: valid against libvirt's RelaxNG schema, and — for every backend
the local daemon has — defined on the real daemon (never built or started: the hosts and devices
are examples) and read back into the same spec."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import get_args

import pytest
from lxml import etree

from messages.pools import PoolDefineArgs, PoolType
from tests.conftest import require, unique
from worker.virt import pool_xml

pytestmark = pytest.mark.integration

SECRET_UUID = "6A4A2D1C-9B6E-4E0B-8F6C-2E1D3C4B5A69"  # libvirt writes it back lower-case
WWNN, WWPN = "20000000c9831b4b", "10000000c9831b4b"


def realistic(case: str, name: str, tmp: Path) -> dict:
    """A pool.define argument document of the kind a control plane sends, per case."""
    kind = case.split(":")[0]
    documents: dict[str, dict] = {
        "dir": {"target": {"path": str(tmp / "dir"),
                           "permissions": {"mode": "755", "owner": 107, "group": 107, "label": "system_u:object_r:virt_image_t:s0"}}},
        "fs": {"source": {"device": [{"path": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1"}], "format": "xfs"},
               "target": {"path": str(tmp / "fs")}},
        "netfs": {"source": {"host": [{"name": "nfs.example.com", "port": 2049}], "dir": "/export/images",
                             "format": "nfs"},
                  "target": {"path": str(tmp / "netfs"), "permissions": {"mode": "0711"}}},
        "netfs:cifs": {"source": {"host": [{"name": "smb.example.com"}], "dir": "images", "format": "cifs"},
                       "target": {"path": str(tmp / "cifs")}},
        "logical": {"source": {"name": "vg0", "device": [{"path": "/dev/sdb"}], "format": "lvm2"}},
        "logical:target": {"source": {"device": [{"path": "/dev/sdb2"}, {"path": "/dev/sdc2"}]},
                           "target": {"path": f"/dev/{name}", "permissions": {"mode": "0700", "owner": 0}}},
        "disk": {"source": {"device": [{"path": "/dev/sdc"}], "format": "gpt"}, "target": {"path": "/dev"}},
        "iscsi": {"source": {"host": [{"name": "192.0.2.10", "port": 3260}],
                             "device": [{"path": "iqn.2013-06.com.example:storage"}],
                             "initiator": {"iqn": "iqn.2024-01.com.example:kvm-01"},
                             "auth": {"type": "chap", "username": "kvm01",
                                      "secret": {"uuid": SECRET_UUID}}},
                  "target": {"path": "/dev/disk/by-path"}},
        "iscsi-direct": {"source": {"host": [{"name": "192.0.2.11"}],
                                    "device": [{"path": "iqn.2013-06.com.example:direct"}],
                                    "initiator": {"iqn": "iqn.2024-01.com.example:kvm-01"},
                                    "auth": {"type": "chap", "username": "kvm01", "secret": {"usage": "iscsi-kvm01"}}}},
        "scsi": {"source": {"adapter": {"type": "scsi_host", "name": "host0"}}, "target": {"path": "/dev/disk/by-path"}},
        "scsi:fc_host": {"source": {"adapter": {"type": "fc_host", "parent": "scsi_host5", "managed": True,
                                                "wwnn": WWNN, "wwpn": WWPN}},
                         "target": {"path": "/dev/disk/by-path"}},
        "mpath": {"target": {"path": "/dev/mapper"}},
        "rbd": {"source": {"host": [{"name": "mon1.example.com", "port": 6789}, {"name": "192.0.2.21"}],
                           "name": "rbdpool",
                           "auth": {"type": "ceph", "username": "libvirt", "secret": {"uuid": SECRET_UUID}}}},
        "sheepdog": {"source": {"host": [{"name": "sheep.example.com", "port": 7000}], "name": "sheepvdi"}},
        "gluster": {"source": {"host": [{"name": "gluster.example.com"}], "name": "gv0", "dir": "/vms"}},
        "zfs": {"source": {"name": "tank/vms", "device": [{"path": "/dev/sdd"}]}},
        "vstorage": {"source": {"name": "vzcluster"}, "target": {"path": str(tmp / "vstorage")}},
    }
    return {"name": name, "type": kind, **documents[case]}


CASES = ["dir", "fs", "netfs", "netfs:cifs", "logical", "logical:target", "disk", "iscsi", "iscsi-direct",
         "scsi", "scsi:fc_host", "mpath", "rbd", "sheepdog", "gluster", "zfs", "vstorage"]


def wanted(args: PoolDefineArgs) -> dict:
    return args.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                           exclude={"build", "start", "autostart"})


def test_cases_cover_every_pool_type():
    assert {case.split(":")[0] for case in CASES} == set(get_args(PoolType))


@pytest.fixture(scope="module")
def validator() -> str:
    tool = shutil.which("virt-xml-validate")
    require(tool is not None, "virt-xml-validate is not installed (package libvirt-clients)")
    require(shutil.which("xmllint") is not None, "xmllint is not installed (package libxml2-utils)")
    return tool


@pytest.fixture
def supported(libvirt_conn) -> set[str]:
    caps = etree.fromstring(libvirt_conn.getStoragePoolCapabilities().encode())
    types = {pool.get("type") for pool in caps.findall("pool") if pool.get("supported") == "yes"}
    assert "dir" in types  # every libvirt storage driver has it; an empty set means the parse broke
    return types


@pytest.fixture
def defined(libvirt_conn):
    """Define pools on the daemon; every pool defined here is undefined at teardown, whatever happened."""
    import libvirt

    names: list[str] = []

    def define(xml: str):
        # Register before defining: a define that succeeds but then fails an assertion is still cleaned up.
        names.append(etree.fromstring(xml.encode()).findtext("name"))
        return libvirt_conn.storagePoolDefineXML(xml, libvirt.VIR_STORAGE_POOL_DEFINE_VALIDATE)

    yield define
    for name in names:
        try:
            pool = libvirt_conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            continue
        if pool.isActive():  # never expected: these pools are not started
            pool.destroy()
        pool.undefine()


@pytest.mark.parametrize("case", CASES)
def test_pool_xml_is_valid_against_libvirt_schema(case, tmp_path, validator):
    args = PoolDefineArgs.model_validate(realistic(case, unique("tsch"), tmp_path))
    xml = pool_xml.build(args)
    path = tmp_path / "pool.xml"
    path.write_text(xml)
    result = subprocess.run([validator, str(path), "storagepool"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{case}: {result.stderr or result.stdout}\n{xml}"


@pytest.mark.parametrize("case", CASES)
def test_pool_round_trips_through_the_daemon(case, tmp_path, libvirt_conn, supported, defined):
    import libvirt

    name = unique("tpx")
    args = PoolDefineArgs.model_validate(realistic(case, name, tmp_path))
    xml = pool_xml.build(args)
    if args.type not in supported:
        # What host.info reports as unsupported, the daemon indeed refuses.
        with pytest.raises(libvirt.libvirtError, match="missing backend"):
            defined(xml)
        assert name not in libvirt_conn.listDefinedStoragePools()
        return
    pool = defined(xml)
    assert pool.name() == name
    assert not pool.isActive()
    held_xml = pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)  # as the pool.define handler reads it
    spec = pool_xml.read_spec(held_xml)
    assert spec["name"] == name and spec["type"] == args.type
    assert pool_xml.differences(wanted(args), spec) == [], held_xml
    pool.undefine()
    assert name not in libvirt_conn.listDefinedStoragePools()


def test_round_trip_comparison_sees_a_changed_spec(tmp_path, libvirt_conn, supported, defined):
    require("netfs" in supported, "the daemon has no netfs backend")
    args = PoolDefineArgs.model_validate(realistic("netfs", unique("tpx"), tmp_path))
    spec = pool_xml.read_spec(defined(pool_xml.build(args)).XMLDesc(0))
    changed = wanted(args)
    changed["source"]["dir"] = "/export/other"
    changed["source"]["host"] = [{"name": "nfs2.example.com", "port": 2049}]
    changed["target"]["permissions"]["mode"] = "0755"
    found = pool_xml.differences(changed, spec)
    assert len(found) == 3, found
    assert any(item.startswith("source.dir is '/export/images' on the host") for item in found)
    assert any("target.permissions.mode is '0711'" in item for item in found)


def test_values_libvirt_rewrites_are_stored_in_its_spelling(tmp_path, libvirt_conn, supported, defined):
    """Mode, secret UUID and logical target are the values libvirt canonicalizes: the model stores
    them the way libvirt writes them back, so a re-sent define compares equal."""
    require({"iscsi", "logical"} <= supported, "the daemon lacks the iscsi or logical backend")
    iscsi = PoolDefineArgs.model_validate(realistic("iscsi", unique("tpx"), tmp_path))
    held = pool_xml.read_spec(defined(pool_xml.build(iscsi)).XMLDesc(0))
    assert held["source"]["auth"]["secret"]["uuid"] == SECRET_UUID.lower()
    assert iscsi.source.auth.secret.uuid == SECRET_UUID.lower()
    name = unique("tpx")
    logical = PoolDefineArgs.model_validate(realistic("logical", name, tmp_path))
    assert logical.target is None
    held = pool_xml.read_spec(defined(pool_xml.build(logical)).XMLDesc(0))
    assert held["target"]["path"] == "/dev/vg0"
