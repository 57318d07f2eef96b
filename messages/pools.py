"""Arguments of the pool operations (docs/contract.md "Operations"), including the pool definition spec."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import uuid as uuidlib
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictBool, StringConstraints, model_validator

from messages.fields import NOT_IN_XML, AbsolutePath, OctalMode, ResourceName, Strict, normalized_absolute

PoolType = Literal[
    "dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi", "mpath",
    "rbd", "sheepdog", "gluster", "zfs", "vstorage",
]


def _host_name(value: str) -> str:
    # libvirt's schema takes a DNS name ([A-Za-z0-9.-]) or an IP address; a name with a colon can
    # only be an IPv6 address, and its pattern knows the hexadecimal spellings of every address
    # but not every spelling with a dotted IPv4 tail.
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError("a host name with ':' must be an IPv6 address") from None
        if "." in value:
            raise ValueError("write an IPv6 address in hexadecimal groups (e.g. '::ffff:c000:20a', "
                             "not '::ffff:192.0.2.10')")
    return value


# A DNS name, an IPv4 address or an IPv6 address, written bare (no brackets).
HostName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$"),
                     AfterValidator(_host_name)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=rf"^[^{NOT_IN_XML}]+$")]


class SourceHost(Strict):
    name: HostName
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] | None = None


class SourceDevice(Strict):
    path: Annotated[Text, Field(description="A device path (/dev/...) or, for iscsi pools, the target IQN")]


class SourceAdapter(Strict):
    type: Literal["scsi_host", "fc_host"]
    name: Text | None = None
    parent: Text | None = None
    wwnn: Annotated[str, StringConstraints(pattern=r"^(0x)?[0-9a-fA-F]{16}$")] | None = None
    wwpn: Annotated[str, StringConstraints(pattern=r"^(0x)?[0-9a-fA-F]{16}$")] | None = None
    managed: StrictBool | None = None

    @model_validator(mode="after")
    def _fits_type(self) -> "SourceAdapter":
        # What libvirt's adapter parser keeps: scsi_host is named; fc_host is found by its WWNs.
        if self.type == "scsi_host":
            if self.name is None:
                raise ValueError("a scsi_host adapter needs name (e.g. 'host0')")
            extra = [f for f in ("parent", "wwnn", "wwpn", "managed") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a scsi_host adapter takes no {', '.join(extra)} (fc_host attributes)")
        else:
            missing = [f for f in ("wwnn", "wwpn") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"an fc_host adapter needs {' and '.join(missing)}")
            if self.name is not None:
                raise ValueError("an fc_host adapter takes no name; it is found by wwnn and wwpn")
        return self


def _canonical_uuid(value: str) -> str:
    # libvirt stores a secret's UUID as 16 bytes and writes it back lower-case with dashes.
    return str(uuidlib.UUID(value))


class AuthSecret(Strict):
    uuid: Annotated[str, StringConstraints(
        pattern=r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})$"),
        AfterValidator(_canonical_uuid)] | None = None
    usage: Text | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "AuthSecret":
        if (self.uuid is None) == (self.usage is None):
            raise ValueError("a secret is named by exactly one of uuid or usage")
        return self


class SourceAuth(Strict):
    type: Literal["chap", "ceph"]
    username: Text
    secret: AuthSecret


class SourceInitiator(Strict):
    iqn: Annotated[str, StringConstraints(min_length=4, max_length=223,
                                          pattern=rf"^(iqn|eui|naa)\.[^\s{NOT_IN_XML}]+$")]


# An NFS protocol version as mount's nfsvers= takes it: 3, 4, 4.1...
NfsVersion = Annotated[str, StringConstraints(pattern=r"^[1-9](\.[0-9])?$"),
                       Field(description="NFS protocol version, e.g. '3', '4', '4.1' (libvirt's <protocol ver>)")]


class PoolSource(Strict):
    host: list[SourceHost] = []
    dir: Text | None = None
    device: list[SourceDevice] = []
    name: Text | None = None
    format: Annotated[str, StringConstraints(pattern=r"^[a-z0-9+]{1,16}$")] | None = None
    adapter: SourceAdapter | None = None
    auth: SourceAuth | None = None
    initiator: SourceInitiator | None = None
    # version 2
    protocol_version: NfsVersion | None = None


# One option of mount(8)'s -o list, as libvirt appends it to its own (fs:mount_opts): a word, with a
# value after '=' where the option takes one; no ',' (which would smuggle in more options).
MountOption = Annotated[str, StringConstraints(min_length=1, max_length=255,
                                               pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+=-]*$")]
# libvirt mounts with nodev,nosuid,noexec; these would undo that.
_UNSAFE_MOUNT_OPTIONS = ("dev", "suid", "exec")


# libvirt treats -1 as "not set" (it never writes it back) and writes ids as signed 32-bit numbers.
_Id = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]


class TargetPermissions(Strict):
    mode: OctalMode | None = None
    owner: _Id | None = None
    group: _Id | None = None
    label: Text | None = None


def _below_root(value: str) -> str:
    # libvirt's schema (absFilePath) wants at least one character after the leading '/'.
    if value == "/":
        raise ValueError("a pool's target path cannot be '/' itself; name a directory under it")
    return value


class PoolTarget(Strict):
    path: Annotated[AbsolutePath, AfterValidator(_below_root)]
    permissions: TargetPermissions | None = None


# What each pool type takes in its definition, after libvirt's storagepool.rng schema and its pool
# parser (virStoragePoolDefParseXML), which drops source fields a type does not use and refuses a
# missing target path for every type that has one, except logical and zfs whose paths it derives:
# "target": True = target.path is required, "derived" = optional, libvirt sets /dev/<vg name>;
# "source": the source fields the type takes; "host"/"device": how many entries (min, max);
# "fields": source fields that must be present; "any_of": at least one of them must be;
# "formats": the source.format values the type knows; "auth": the auth type its backend speaks.
_DEVICE_ONE = (1, 1)
_FS_FORMATS = ("auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat", "hfs+",
               "xfs", "ocfs2", "vmfs")
_NETFS_FORMATS = ("auto", "nfs", "glusterfs", "cifs")
_DISK_FORMATS = ("unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2")
_LOGICAL_FORMATS = ("unknown", "lvm2")
_REQUIREMENTS: dict[str, dict] = {
    "dir": {"target": True, "source": ()},
    "fs": {"target": True, "source": ("device", "format"), "device": _DEVICE_ONE, "formats": _FS_FORMATS},
    "netfs": {"target": True, "source": ("host", "dir", "format", "protocol_version"), "host": (1, 1),
              "fields": ("dir",), "formats": _NETFS_FORMATS, "mount_options": True},
    "logical": {"target": "derived", "source": ("name", "device", "format"), "device": (0, 256),
                "any_of": ("name", "device"), "formats": _LOGICAL_FORMATS},
    "disk": {"target": True, "source": ("device", "format"), "device": _DEVICE_ONE, "formats": _DISK_FORMATS},
    "iscsi": {"target": True, "source": ("host", "device", "initiator", "auth"), "host": (1, 1),
              "device": _DEVICE_ONE, "auth": "chap"},
    "iscsi-direct": {"source": ("host", "device", "initiator", "auth"), "host": (1, 1), "device": _DEVICE_ONE,
                     "fields": ("initiator",), "auth": "chap"},
    "scsi": {"target": True, "source": ("adapter",), "fields": ("adapter",)},
    "mpath": {"target": True, "source": ()},
    "rbd": {"source": ("host", "name", "auth"), "host": (1, 64), "fields": ("name",), "auth": "ceph"},
    "sheepdog": {"source": ("host", "name"), "host": (1, 1), "fields": ("name",)},
    "gluster": {"source": ("host", "name", "dir"), "host": (1, 1), "fields": ("name",)},
    "zfs": {"source": ("name", "device"), "device": (0, 1), "fields": ("name",)},
    "vstorage": {"target": True, "source": ("name",), "fields": ("name",)},
}
_SOURCE_FIELDS = ("host", "dir", "device", "name", "format", "adapter", "auth", "initiator", "protocol_version")
# The schema's IscsiQualifiedName, the only device path an iscsi-direct pool takes.
_IQN = re.compile(r"^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-zA-Z0-9.-]+(:.+)?$")
# Pool types whose source devices are local block devices (paths under /dev).
LOCAL_DEVICE_TYPES = frozenset({"fs", "logical", "disk", "zfs"})
# Pool types whose target is a directory of files the worker creates (checked against ALLOWED_ROOTS);
# the other types' targets are directories of device nodes and must lie under /dev.
FILE_TARGET_TYPES = frozenset({"dir", "fs", "netfs", "vstorage"})
DEVICE_TARGET_TYPES = frozenset({"logical", "disk", "iscsi", "scsi", "mpath"})


def _given(source: "PoolSource", field: str) -> bool:
    value = getattr(source, field)
    return value != [] if isinstance(value, list) else value is not None


class PoolDefineArgs(Strict):
    name: ResourceName
    type: PoolType
    target: PoolTarget | None = None
    source: PoolSource | None = None
    build: StrictBool = Field(False, description="Build the pool's storage (never overwriting data)")
    start: StrictBool = Field(False, description="Start the pool")
    autostart: StrictBool | None = Field(None, description="Turn autostart on or off; absent: leave as it is")
    # version 2
    mount_options: Annotated[list[MountOption], Field(max_length=64)] | None = Field(
        None, description="netfs: options added to libvirt's own when it mounts the pool (fs:mount_opts)")

    @model_validator(mode="after")
    def _fits_type(self) -> "PoolDefineArgs":
        kind = self.type
        need = _REQUIREMENTS[kind]
        source = self.source or PoolSource()
        if kind == "dir" and self.source is not None:
            raise ValueError("a dir pool takes no source; remove source")
        if need.get("target") is True and self.target is None:
            raise ValueError(f"a {kind} pool needs target.path")
        if self.target is not None and kind not in FILE_TARGET_TYPES | DEVICE_TARGET_TYPES:
            raise ValueError(f"a {kind} pool has no target path; remove target")
        for field in _SOURCE_FIELDS:
            if _given(source, field) and field not in need["source"]:
                raise ValueError(f"a {kind} pool takes no source.{field}; remove it")
        for field in ("host", "device"):
            low, high = need.get(field, (0, 0))
            count = len(getattr(source, field))
            if not low <= count <= high:
                wanted = f"exactly {low}" if low == high else f"{low} to {high}"
                raise ValueError(f"a {kind} pool needs {wanted} source.{field} entries, got {count}")
        for field in need.get("fields", ()):
            if getattr(source, field) is None:
                raise ValueError(f"a {kind} pool needs source.{field}")
        any_of = need.get("any_of")
        if any_of and not any(_given(source, f) for f in any_of):
            raise ValueError(f"a {kind} pool needs source.{any_of[0]} or source.{any_of[1]}")
        formats = need.get("formats", ())
        if source.format is not None and source.format not in formats:
            raise ValueError(f"source.format {source.format!r} is not a format of a {kind} pool "
                             f"(one of: {', '.join(formats)})")
        if source.auth is not None and source.auth.type != need["auth"]:
            raise ValueError(f"source.auth.type {source.auth.type!r} does not fit a {kind} pool; "
                             f"its backend authenticates with {need['auth']!r}")
        for device in source.device:
            if kind in LOCAL_DEVICE_TYPES:
                try:
                    normalized_absolute(device.path)
                except ValueError as exc:
                    raise ValueError(f"source.device path {device.path!r} of a {kind} pool: {exc}") from None
                if not device.path.startswith("/dev/"):
                    raise ValueError(f"source.device path {device.path!r} of a {kind} pool "
                                     f"must be a device under /dev/")
            elif kind == "iscsi-direct" and not _IQN.match(device.path):
                raise ValueError(f"source.device path {device.path!r} of an iscsi-direct pool must be "
                                 f"the target's IQN, e.g. 'iqn.2013-06.com.example:storage'")
        if source.dir is not None:
            self._check_dir(source)
        if source.protocol_version is not None and source.format not in (None, "auto", "nfs"):
            raise ValueError(f"source.protocol_version is the NFS version; a netfs pool of format "
                             f"{source.format!r} takes none (libvirt's schema allows it for nfs and auto)")
        if self.mount_options is not None:
            self._check_mount_options(need)
        if need.get("target") == "derived" and self.target is not None:
            derived = f"/dev/{source.name or self.name}"
            if self.target.path != derived:
                raise ValueError(f"target.path {self.target.path!r} of a {kind} pool is always {derived!r} "
                                 f"(/dev/ and the volume group name); remove target.path or use that")
        return self

    def _check_mount_options(self, need: dict) -> None:
        if not need.get("mount_options"):
            raise ValueError(f"a {self.type} pool takes no mount_options (netfs pools do); remove it")
        for option in self.mount_options:
            word = option.partition("=")[0]
            if word in _UNSAFE_MOUNT_OPTIONS:
                raise ValueError(f"mount option {option!r} would undo libvirt's nodev,nosuid,noexec; "
                                 f"the worker does not allow it")
            if word in ("nfsvers", "vers"):
                raise ValueError(f"mount option {option!r}: give the NFS version as source.protocol_version "
                                 f"(libvirt turns it into nfsvers=)")
        if len(set(self.mount_options)) != len(self.mount_options):
            raise ValueError(f"mount_options lists an option twice: {self.mount_options}")

    def _check_dir(self, source: PoolSource) -> None:
        # libvirt sanitizes the directory (no '//', no trailing '/') before storing it: only its
        # normalized form reads back the same. NFS exports and gluster directories are absolute;
        # a cifs share or a glusterfs volume name (netfs) is not.
        value = source.dir
        relative = self.type == "netfs" and source.format in ("cifs", "glusterfs")
        if relative and not value.startswith("/"):
            if posixpath.normpath(value) != value:
                raise ValueError(f"source.dir {value!r} must be normalized (no '.', '..', '//' or "
                                 f"trailing '/'); the normalized form is {posixpath.normpath(value)!r}")
            return
        try:
            normalized_absolute(value)
        except ValueError as exc:
            raise ValueError(f"source.dir {value!r} of a {self.type} pool: {exc}") from None


class PoolNameArgs(Strict):
    name: ResourceName


class PoolBuildArgs(Strict):
    name: ResourceName
    overwrite: StrictBool | None = Field(
        None, description="true: overwrite existing data (OVERWRITE); false: refuse to (NO_OVERWRITE); "
                          "absent: the backend's default")


class PoolStartArgs(Strict):
    name: ResourceName
    build: StrictBool = False


class PoolAutostartArgs(Strict):
    name: ResourceName
    enabled: StrictBool


class PoolListArgs(Strict):
    state: Literal["active", "inactive"] | None = None
