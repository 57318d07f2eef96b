"""Validation rules of pool.define's arguments (and of the volume argument models with rules of
their own), checked against what libvirt's storagepool.rng and pool parser accept."""

from __future__ import annotations

import copy
from typing import get_args

import pytest
from pydantic import ValidationError

from messages.errors import describe
from messages.pools import (
    DEVICE_TARGET_TYPES,
    FILE_TARGET_TYPES,
    AuthSecret,
    PoolDefineArgs,
    PoolType,
    SourceAdapter,
)
from messages.volumes import UploadSource, VolumeAttachArgs, VolumeCreateArgs, VolumeDetachArgs

UUID = "3e3fce45-4f53-4fa7-bb32-11f34168b82b"

# One minimal valid definition per pool type.
MINIMAL: dict[str, dict] = {
    "dir": {"target": {"path": "/var/lib/libvirt/images/p"}},
    "fs": {"target": {"path": "/var/lib/libvirt/images/p"}, "source": {"device": [{"path": "/dev/sdb1"}]}},
    "netfs": {"target": {"path": "/var/lib/libvirt/images/p"},
              "source": {"host": [{"name": "nfs.example.com"}], "dir": "/export/images"}},
    "logical": {"source": {"name": "vg0"}},
    "disk": {"target": {"path": "/dev"}, "source": {"device": [{"path": "/dev/sdc"}]}},
    "iscsi": {"target": {"path": "/dev/disk/by-path"},
              "source": {"host": [{"name": "192.0.2.10"}], "device": [{"path": "iqn.2013-06.com.example:storage"}]}},
    "iscsi-direct": {"source": {"host": [{"name": "192.0.2.10"}],
                                "device": [{"path": "iqn.2013-06.com.example:storage"}],
                                "initiator": {"iqn": "iqn.2013-06.com.example:client"}}},
    "scsi": {"target": {"path": "/dev/disk/by-path"},
             "source": {"adapter": {"type": "scsi_host", "name": "host0"}}},
    "mpath": {"target": {"path": "/dev/mapper"}},
    "rbd": {"source": {"host": [{"name": "mon1.example.com"}], "name": "rbdpool"}},
    "sheepdog": {"source": {"host": [{"name": "sheep.example.com", "port": 7000}], "name": "sheep"}},
    "gluster": {"source": {"host": [{"name": "gluster.example.com"}], "name": "gv0"}},
    "zfs": {"source": {"name": "tank"}},
    "vstorage": {"target": {"path": "/var/lib/libvirt/images/vz"}, "source": {"name": "vzcluster"}},
}


def spec(kind: str, **changes: object) -> dict:
    document = {"name": "p1", "type": kind, **copy.deepcopy(MINIMAL[kind])}
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def with_source(kind: str, **changes: object) -> dict:
    document = spec(kind)
    source = document.setdefault("source", {})
    for key, value in changes.items():
        if value is None:
            source.pop(key, None)
        else:
            source[key] = value
    return document


def error_of(document: dict, model=PoolDefineArgs) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    return describe(caught.value, "args")


def test_every_pool_type_has_a_minimal_example():
    assert set(MINIMAL) == set(get_args(PoolType))


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_minimal_example_is_valid(kind):
    args = PoolDefineArgs.model_validate(spec(kind))
    assert args.type == kind and args.name == "p1"
    assert args.build is False and args.start is False


# --- a required piece missing, per type --------------------------------------------------------

@pytest.mark.parametrize("document, message", [
    (spec("dir", target=None), "a dir pool needs target.path"),
    (spec("fs", target=None), "a fs pool needs target.path"),
    (with_source("fs", device=None), "a fs pool needs exactly 1 source.device entries, got 0"),
    (with_source("fs", device=[{"path": "/dev/sdb1"}, {"path": "/dev/sdc1"}]),
     "a fs pool needs exactly 1 source.device entries, got 2"),
    (spec("netfs", target=None), "a netfs pool needs target.path"),
    (with_source("netfs", dir=None), "a netfs pool needs source.dir"),
    (with_source("netfs", host=None), "a netfs pool needs exactly 1 source.host entries, got 0"),
    (with_source("logical", name=None), "a logical pool needs source.name or source.device"),
    (spec("disk", target=None), "a disk pool needs target.path"),
    (with_source("disk", device=None), "a disk pool needs exactly 1 source.device entries, got 0"),
    (spec("iscsi", target=None), "a iscsi pool needs target.path"),
    (with_source("iscsi", host=None), "a iscsi pool needs exactly 1 source.host entries, got 0"),
    (with_source("iscsi", device=None), "a iscsi pool needs exactly 1 source.device entries, got 0"),
    (with_source("iscsi-direct", initiator=None), "a iscsi-direct pool needs source.initiator"),
    (with_source("iscsi-direct", host=None), "a iscsi-direct pool needs exactly 1 source.host entries"),
    (spec("scsi", target=None), "a scsi pool needs target.path"),
    (with_source("scsi", adapter=None), "a scsi pool needs source.adapter"),
    (spec("mpath", target=None), "a mpath pool needs target.path"),
    (with_source("rbd", name=None), "a rbd pool needs source.name"),
    (with_source("rbd", host=None), "a rbd pool needs 1 to 64 source.host entries, got 0"),
    (with_source("sheepdog", name=None), "a sheepdog pool needs source.name"),
    (with_source("gluster", name=None), "a gluster pool needs source.name"),
    (with_source("gluster", host=None), "a gluster pool needs exactly 1 source.host entries, got 0"),
    (with_source("zfs", name=None), "a zfs pool needs source.name"),
    (with_source("vstorage", name=None), "a vstorage pool needs source.name"),
    (spec("vstorage", target=None), "a vstorage pool needs target.path"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_missing_piece(document, message):
    assert message in error_of(document)


def test_missing_source_entirely_names_the_first_missing_piece():
    assert "a netfs pool needs exactly 1 source.host entries, got 0" in error_of(spec("netfs", source=None))
    assert "a scsi pool needs source.adapter" in error_of(spec("scsi", source=None))


# --- things a type does not take ----------------------------------------------------------------

def test_dir_pool_takes_no_source():
    assert "a dir pool takes no source; remove source" in error_of(spec("dir", source={}))
    assert "a dir pool takes no source" in error_of(spec("dir", source={"dir": "/srv"}))


@pytest.mark.parametrize("kind", ["iscsi-direct", "rbd", "sheepdog", "gluster", "zfs"])
def test_types_without_a_target_path_refuse_one(kind):
    assert f"a {kind} pool has no target path; remove target" in error_of(spec(kind, target={"path": "/srv/x"}))


@pytest.mark.parametrize("kind, field, value", [
    ("netfs", "adapter", {"type": "scsi_host", "name": "host0"}),
    ("fs", "host", [{"name": "nfs.example.com"}]),
    ("fs", "name", "vg0"),
    ("disk", "dir", "/export"),
    ("iscsi", "name", "x"),
    ("iscsi", "format", "gpt"),
    ("rbd", "device", [{"path": "/dev/sdb"}]),
    ("rbd", "dir", "/x"),
    ("scsi", "host", [{"name": "h.example.com"}]),
    ("mpath", "device", [{"path": "/dev/sdb"}]),
    ("sheepdog", "auth", {"type": "ceph", "username": "u", "secret": {"usage": "s"}}),
    ("zfs", "format", "gpt"),
    ("vstorage", "host", [{"name": "h.example.com"}]),
    ("logical", "initiator", {"iqn": "iqn.2013-06.com.example:client"}),
])
def test_source_fields_a_type_does_not_take(kind, field, value):
    assert f"a {kind} pool takes no source.{field}; remove it" in error_of(with_source(kind, **{field: value}))


def test_mpath_takes_an_empty_source():
    assert PoolDefineArgs.model_validate(spec("mpath", source={})).source is not None


@pytest.mark.parametrize("kind, fmt", [("fs", "ext4"), ("fs", "xfs"), ("netfs", "nfs"), ("netfs", "auto"),
                                       ("disk", "gpt"), ("disk", "dos"), ("logical", "lvm2")])
def test_formats_a_type_knows(kind, fmt):
    assert PoolDefineArgs.model_validate(with_source(kind, format=fmt)).source.format == fmt


@pytest.mark.parametrize("kind, fmt", [("fs", "nfs"), ("netfs", "ext4"), ("disk", "lvm3"), ("logical", "gpt")])
def test_formats_a_type_does_not_know(kind, fmt):
    message = error_of(with_source(kind, format=fmt))
    assert f"source.format {fmt!r} is not a format of a {kind} pool" in message


@pytest.mark.parametrize("kind, auth_type, wanted", [("iscsi", "ceph", "chap"), ("rbd", "chap", "ceph")])
def test_auth_type_must_fit_the_backend(kind, auth_type, wanted):
    auth = {"type": auth_type, "username": "u", "secret": {"uuid": UUID}}
    message = error_of(with_source(kind, auth=auth))
    assert f"source.auth.type {auth_type!r} does not fit a {kind} pool" in message and repr(wanted) in message


# --- paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, normalized", [
    ("/var/lib/libvirt/images/", "/var/lib/libvirt/images"),
    ("/var/lib//images", "/var/lib/images"),
    ("/var/lib/./images", "/var/lib/images"),
    ("/var/lib/libvirt/../images", "/var/lib/images"),
    ("//var/lib", "//var/lib"),
])
def test_target_path_must_be_normalized(path, normalized):
    message = error_of(spec("dir", target={"path": path}))
    assert "args.target.path: a path must be normalized" in message
    assert repr(path) in message
    if normalized != path:
        assert repr(normalized) in message


@pytest.mark.parametrize("path", ["images", "./images", "", "/var/\x00x"])
def test_target_path_must_be_absolute(path):
    message = error_of(spec("dir", target={"path": path}))
    assert "args.target.path" in message


@pytest.mark.parametrize("kind", ["fs", "logical", "disk", "zfs"])
@pytest.mark.parametrize("path", ["/srv/disk.img", "sdb", "/dev", "/devices/sdb"])
def test_local_device_must_be_under_dev(kind, path):
    document = with_source(kind, device=[{"path": path}])
    if kind == "logical":
        document["source"]["name"] = "vg0"
    message = error_of(document)
    assert repr(path) in message and f"of a {kind} pool" in message


@pytest.mark.parametrize("kind", ["fs", "disk", "logical"])
@pytest.mark.parametrize("path", ["/dev/../etc/shadow", "/dev//sdb", "/dev/sdb/"])
def test_local_device_path_must_be_normalized(kind, path):
    message = error_of(with_source(kind, device=[{"path": path}]))
    assert repr(path) in message and "normalized" in message


def test_local_device_under_dev_subdirectories_is_fine():
    args = PoolDefineArgs.model_validate(with_source("fs", device=[{"path": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"}]))
    assert args.source.device[0].path.startswith("/dev/disk/by-id/")


def test_logical_takes_several_physical_volumes():
    devices = [{"path": "/dev/sdb"}, {"path": "/dev/sdc"}, {"path": "/dev/sdd"}]
    args = PoolDefineArgs.model_validate(with_source("logical", device=devices))
    assert [d.path for d in args.source.device] == ["/dev/sdb", "/dev/sdc", "/dev/sdd"]
    only_devices = PoolDefineArgs.model_validate(spec("logical", source={"device": devices[:1]}))
    assert only_devices.source.name is None


def test_logical_target_is_the_volume_group_directory():
    ok = PoolDefineArgs.model_validate(spec("logical", target={"path": "/dev/vg0"}))
    assert ok.target.path == "/dev/vg0"
    # without source.name libvirt names the volume group after the pool
    named_after_pool = spec("logical", source={"device": [{"path": "/dev/sdb"}]}, target={"path": "/dev/p1"})
    assert PoolDefineArgs.model_validate(named_after_pool).target.path == "/dev/p1"
    message = error_of(spec("logical", target={"path": "/srv/vg0"}))
    assert "'/srv/vg0'" in message and "'/dev/vg0'" in message


def test_iscsi_target_iqn_is_a_device_path():
    args = PoolDefineArgs.model_validate(spec("iscsi"))
    assert args.source.device[0].path == "iqn.2013-06.com.example:storage"


@pytest.mark.parametrize("path", ["/dev/sdb", "iqn.13-06.com.example", "target1", "eui.02004567A425678D"])
def test_iscsi_direct_device_must_be_an_iqn(path):
    message = error_of(with_source("iscsi-direct", device=[{"path": path}]))
    assert repr(path) in message and "IQN" in message


@pytest.mark.parametrize("kind, directory", [("netfs", "/export/images/"), ("netfs", "/export//images"),
                                             ("netfs", "export/images"), ("gluster", "/vol/"),
                                             ("gluster", "sub")])
def test_absolute_source_dir_must_be_normalized(kind, directory):
    message = error_of(with_source(kind, dir=directory))
    assert repr(directory) in message and "args: source.dir" in message


def test_cifs_share_is_a_relative_dir():
    args = PoolDefineArgs.model_validate(with_source("netfs", format="cifs", dir="share/images"))
    assert args.source.dir == "share/images"
    assert "'share/images/'" in error_of(with_source("netfs", format="cifs", dir="share/images/"))


# --- hosts, adapters, auth, permissions ------------------------------------------------------------

@pytest.mark.parametrize("name", ["nfs.example.com", "192.0.2.10", "2001:db8::1", "localhost"])
def test_host_names_libvirt_takes(name):
    assert PoolDefineArgs.model_validate(with_source("netfs", host=[{"name": name}])).source.host[0].name == name


@pytest.mark.parametrize("name", ["[2001:db8::1]", "nfs_1.example.com", "nfs.example.com/x", "", "a b"])
def test_host_names_libvirt_refuses(name):
    message = error_of(with_source("netfs", host=[{"name": name}]))
    assert "args.source.host[0].name" in message and repr(name) in message


@pytest.mark.parametrize("port", [0, 65536, "2049", True])
def test_host_port_range_and_type(port):
    message = error_of(with_source("netfs", host=[{"name": "nfs.example.com", "port": port}]))
    assert "args.source.host[0].port" in message


def test_scsi_host_adapter_rules():
    assert SourceAdapter(type="scsi_host", name="host0").name == "host0"
    with pytest.raises(ValidationError, match="a scsi_host adapter needs name"):
        SourceAdapter(type="scsi_host")
    with pytest.raises(ValidationError, match="takes no parent, wwnn"):
        SourceAdapter(type="scsi_host", name="host0", parent="scsi_host5", wwnn="20000000c9831b4b")


def test_fc_host_adapter_rules():
    adapter = SourceAdapter(type="fc_host", parent="scsi_host5", wwnn="20000000c9831b4b",
                            wwpn="0x10000000c9831b4b", managed=True)
    assert adapter.wwpn == "0x10000000c9831b4b"
    with pytest.raises(ValidationError, match="needs wwnn and wwpn"):
        SourceAdapter(type="fc_host", parent="scsi_host5")
    with pytest.raises(ValidationError, match="needs wwpn"):
        SourceAdapter(type="fc_host", wwnn="20000000c9831b4b")
    with pytest.raises(ValidationError, match="takes no name"):
        SourceAdapter(type="fc_host", name="host5", wwnn="20000000c9831b4b", wwpn="10000000c9831b4b")
    with pytest.raises(ValidationError, match="should match pattern"):
        SourceAdapter(type="fc_host", wwnn="20000000c9831b4", wwpn="10000000c9831b4b")


def test_auth_secret_with_both_uuid_and_usage():
    with pytest.raises(ValidationError, match="exactly one of uuid or usage"):
        AuthSecret(uuid=UUID, usage="ceph-client")
    auth = {"type": "ceph", "username": "admin", "secret": {"uuid": UUID, "usage": "ceph-client"}}
    message = error_of(with_source("rbd", auth=auth))
    assert "args.source.auth.secret: a secret is named by exactly one of uuid or usage" in message


def test_auth_secret_with_neither():
    with pytest.raises(ValidationError, match="exactly one of uuid or usage"):
        AuthSecret()


@pytest.mark.parametrize("given", ["3E3FCE45-4F53-4FA7-BB32-11F34168B82B", "3e3fce454f534fa7bb3211f34168b82b", UUID])
def test_auth_secret_uuid_is_stored_as_libvirt_writes_it(given):
    assert AuthSecret(uuid=given).uuid == UUID


@pytest.mark.parametrize("given", ["3e3fce45-4f53-4fa7-bb32", "3e3fce45-4f534fa7-bb32-11f34168b82b-",
                                   "--------------------------------", "zzzfce45-4f53-4fa7-bb32-11f34168b82b"])
def test_auth_secret_uuid_must_be_a_uuid(given):
    with pytest.raises(ValidationError):
        AuthSecret(uuid=given)


@pytest.mark.parametrize("given, stored", [("755", "0755"), ("0755", "0755"), ("0700", "0700"), ("711", "0711"),
                                           ("0", "00"), ("0777", "0777"), ("75", "075")])
def test_permission_mode_is_stored_as_libvirt_writes_it(given, stored):
    document = spec("dir", target={"path": "/srv/p", "permissions": {"mode": given}})
    assert PoolDefineArgs.model_validate(document).target.permissions.mode == stored


@pytest.mark.parametrize("mode", ["1777", "04755", "0800", "rwx", "-755", "07555", "", "0o755"])
def test_permission_mode_libvirt_refuses(mode):
    document = spec("dir", target={"path": "/srv/p", "permissions": {"mode": mode}})
    message = error_of(document)
    assert "args.target.permissions.mode" in message and repr(mode) in message


@pytest.mark.parametrize("field", ["owner", "group"])
@pytest.mark.parametrize("value", [-1, -2, 2**31, "107", True])
def test_permission_ids_libvirt_cannot_keep(field, value):
    document = spec("dir", target={"path": "/srv/p", "permissions": {field: value}})
    assert f"args.target.permissions.{field}" in error_of(document)


def test_permission_ids_in_range():
    document = spec("dir", target={"path": "/srv/p", "permissions": {"owner": 0, "group": 2**31 - 1}})
    perms = PoolDefineArgs.model_validate(document).target.permissions
    assert (perms.owner, perms.group) == (0, 2**31 - 1)


def test_file_and_device_target_types_cover_every_type_with_a_target():
    with_target = {kind for kind, example in MINIMAL.items() if "target" in example} | {"logical"}
    assert with_target == FILE_TARGET_TYPES | DEVICE_TARGET_TYPES
    assert "vstorage" in FILE_TARGET_TYPES


@pytest.mark.parametrize("name", ["a/b", "..", ".", ""])
def test_pool_name_rules(name):
    assert "args.name" in error_of(spec("dir", name=name) if name else {**spec("dir"), "name": ""})


def test_unknown_field_anywhere_is_refused():
    assert "args.source.vendor is not a field" in error_of(with_source("fs", vendor="x"))
    assert "args.colour is not a field" in error_of({**spec("dir"), "colour": "red"})


# --- volume rules ------------------------------------------------------------------------------------

def create(**changes: object) -> dict:
    return {"pool": "images", "name": "v.qcow2", "capacity": 1024, **changes}


def test_volume_create_minimal_and_full():
    assert VolumeCreateArgs.model_validate(create()).format is None
    full = VolumeCreateArgs.model_validate(create(allocation=1024, format="qcow2", prealloc_metadata=True,
                                                  backing={"pool": "base", "name": "debian.qcow2"}))
    assert full.backing.name == "debian.qcow2"


def test_allocation_larger_than_capacity():
    message = error_of(create(allocation=1025), VolumeCreateArgs)
    assert "allocation 1025 is larger than capacity 1024" in message


def test_allocation_equal_to_capacity_or_zero_is_fine():
    assert VolumeCreateArgs.model_validate(create(allocation=1024)).allocation == 1024
    assert VolumeCreateArgs.model_validate(create(allocation=0)).allocation == 0


@pytest.mark.parametrize("fmt", ["raw", None, "iso", "vdi"])
def test_backing_needs_a_format_that_has_one(fmt):
    message = error_of(create(format=fmt, backing={"pool": "base", "name": "b"}), VolumeCreateArgs)
    assert "a backing volume needs a format" in message and f"got format {fmt!r}" in message


@pytest.mark.parametrize("fmt", ["qcow2", "qed", "vmdk", "qcow"])
def test_backing_with_backing_formats(fmt):
    assert VolumeCreateArgs.model_validate(create(format=fmt, backing={"pool": "b", "name": "b"})).format == fmt


@pytest.mark.parametrize("fmt", ["raw", None, "qed", "vmdk"])
def test_prealloc_metadata_needs_qcow2(fmt):
    message = error_of(create(format=fmt, prealloc_metadata=True), VolumeCreateArgs)
    assert "prealloc_metadata applies to qcow2 volumes" in message and repr(fmt) in message


@pytest.mark.parametrize("fmt", ["vhdx", "QCOW2", "luks", ""])
def test_volume_formats_libvirt_does_not_know(fmt):
    assert "args.format" in error_of(create(format=fmt), VolumeCreateArgs)


@pytest.mark.parametrize("source", [{"path": "/srv/a.img"}, {"url": "https://images.example.com/a.qcow2"},
                                    {"url": "http://10.0.0.1/a"}])
def test_upload_source_with_exactly_one(source):
    model = UploadSource.model_validate(source)
    assert (model.path is None) != (model.url is None)


@pytest.mark.parametrize("source", [{}, {"path": "/srv/a.img", "url": "https://images.example.com/a"},
                                    {"path": None, "url": None}])
def test_upload_source_without_exactly_one(source):
    with pytest.raises(ValidationError, match="exactly one of path or url"):
        UploadSource.model_validate(source)


@pytest.mark.parametrize("source", [{"url": "ftp://x/a"}, {"url": "https://x/a b"}, {"path": "srv/a.img"},
                                    {"path": "/srv/../etc/shadow"}])
def test_upload_source_bad_values(source):
    with pytest.raises(ValidationError):
        UploadSource.model_validate(source)


@pytest.mark.parametrize("target", ["vdb", "vda", "sda", "hdc", "xvda", "vdaa", "vdzzz"])
def test_attach_target_pattern_accepts(target):
    args = VolumeAttachArgs(domain="vm1", pool="p", name="v", target=target)
    assert args.target == target and args.config is True and args.live is None
    assert VolumeDetachArgs(domain="vm1", target=target).target == target


@pytest.mark.parametrize("target", ["vd", "vdB", "nvme0n1", "vdb1", "/dev/vdb", "vdaaaa", "xvd", "fda", " vdb"])
def test_attach_target_pattern_refuses(target):
    message = error_of({"domain": "vm1", "pool": "p", "name": "v", "target": target}, VolumeAttachArgs)
    assert "args.target" in message and repr(target) in message


# --- what the property tests (test_fuzz_xml.py) found the models let through to the XML builders ---

@pytest.mark.parametrize("document, message", [
    # lxml cannot build an element holding a control character or U+FFFE/U+FFFF: the handler crashed.
    (spec("dir", target={"path": "/srv/a\x1bb"}), "found '\\x1b' at position 6"),
    (spec("dir", target={"path": "/srv/\ufffe"}), "U+FFFE/U+FFFF"),
    (with_source("zfs", name="tank\uffff"), "args.source.name: String should match pattern"),
    (with_source("iscsi-direct", initiator={"iqn": "iqn.\x1b"}), "args.source.initiator.iqn"),
    # libvirt's schema refuses these: absFilePath needs a character after '/', '.' no line break,
    # a host name with ':' must be an IPv6 address its pattern knows.
    (spec("dir", target={"path": "/"}), "a pool's target path cannot be '/' itself"),
    (spec("dir", target={"path": "/srv/a\nb"}), "found '\\n' at position 6"),
    (with_source("sheepdog", host=[{"name": ":"}]), "a host name with ':' must be an IPv6 address"),
    (with_source("rbd", host=[{"name": "::ffff:192.0.2.10"}]), "write an IPv6 address in hexadecimal groups"),
])
def test_what_no_libvirt_xml_can_carry_is_refused_naming_the_field(document, message):
    assert message in error_of(document)


@pytest.mark.parametrize("host", ["::1", "fe80::1", "1:2:3:4:5:6:7:8", "::ffff:c000:20a", "192.0.2.10",
                                  "nfs.example.com"])
def test_host_names_libvirt_takes(host):
    assert PoolDefineArgs.model_validate(with_source("gluster", host=[{"name": host}])).source.host[0].name == host
