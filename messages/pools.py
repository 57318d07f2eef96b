"""Arguments of the pool operations (CONTRACT §3), including the pool definition spec."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StringConstraints, model_validator

from messages.fields import AbsolutePath, OctalMode, ResourceName, Strict

PoolType = Literal[
    "dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi", "mpath",
    "rbd", "sheepdog", "gluster", "zfs", "vstorage",
]

HostName = Annotated[str, StringConstraints(min_length=1, max_length=253,
                                            pattern=r"^[A-Za-z0-9_.:\[\]-]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")]


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


class AuthSecret(Strict):
    uuid: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F-]{32,36}$")] | None = None
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
    iqn: Annotated[str, StringConstraints(min_length=4, max_length=223, pattern=r"^(iqn|eui|naa)\.[^\s]+$")]


class PoolSource(Strict):
    host: list[SourceHost] = []
    dir: Text | None = None
    device: list[SourceDevice] = []
    name: Text | None = None
    format: Annotated[str, StringConstraints(pattern=r"^[a-z0-9+]{1,16}$")] | None = None
    adapter: SourceAdapter | None = None
    auth: SourceAuth | None = None
    initiator: SourceInitiator | None = None


class TargetPermissions(Strict):
    mode: OctalMode | None = None
    owner: Annotated[int, Field(strict=True, ge=-1)] | None = None
    group: Annotated[int, Field(strict=True, ge=-1)] | None = None
    label: Text | None = None


class PoolTarget(Strict):
    path: AbsolutePath
    permissions: TargetPermissions | None = None


# What each pool type needs in its definition, after libvirt's storage pool format docs.
# "target": a target path is required; "device"/"host": how many entries (min, max);
# other names: source fields that must be present.
_DEVICE_ONE = (1, 1)
_REQUIREMENTS: dict[str, dict] = {
    "dir": {"target": True},
    "fs": {"target": True, "device": _DEVICE_ONE},
    "netfs": {"target": True, "host": (1, 1), "fields": ("dir",)},
    "logical": {"any_of": ("name", "device")},
    "disk": {"device": _DEVICE_ONE},
    "iscsi": {"host": (1, 1), "device": _DEVICE_ONE},
    "iscsi-direct": {"host": (1, 1), "device": _DEVICE_ONE, "fields": ("initiator",)},
    "scsi": {"fields": ("adapter",)},
    "mpath": {},
    "rbd": {"host": (1, 64), "fields": ("name",)},
    "sheepdog": {"host": (1, 1), "fields": ("name",)},
    "gluster": {"host": (1, 1), "fields": ("name",)},
    "zfs": {"fields": ("name",)},
    "vstorage": {"fields": ("name",)},
}
# Pool types whose source devices are local block devices (paths under /dev).
LOCAL_DEVICE_TYPES = frozenset({"fs", "logical", "disk", "zfs"})
# Pool types whose target is a directory of files the worker creates (checked against ALLOWED_ROOTS);
# the other types' targets are directories of device nodes and must lie under /dev.
FILE_TARGET_TYPES = frozenset({"dir", "fs", "netfs"})
DEVICE_TARGET_TYPES = frozenset({"logical", "disk", "iscsi", "scsi", "mpath"})


class PoolDefineArgs(Strict):
    name: ResourceName
    type: PoolType
    target: PoolTarget | None = None
    source: PoolSource | None = None
    build: StrictBool = False
    start: StrictBool = False
    autostart: StrictBool = False

    @model_validator(mode="after")
    def _fits_type(self) -> "PoolDefineArgs":
        need = _REQUIREMENTS[self.type]
        source = self.source or PoolSource()
        if need.get("target") and self.target is None:
            raise ValueError(f"a {self.type} pool needs target.path")
        if self.target is not None and self.type not in FILE_TARGET_TYPES | DEVICE_TARGET_TYPES:
            raise ValueError(f"a {self.type} pool has no target path; remove target")
        for field in ("host", "device"):
            low, high = need.get(field, (0, 0))
            count = len(getattr(source, field))
            if not low <= count <= high:
                wanted = f"exactly {low}" if low == high else f"{low} to {high}"
                raise ValueError(f"a {self.type} pool needs {wanted} source.{field} entries, got {count}")
        for field in need.get("fields", ()):
            if getattr(source, field) is None:
                raise ValueError(f"a {self.type} pool needs source.{field}")
        any_of = need.get("any_of")
        if any_of and not any(getattr(source, f) for f in any_of):
            raise ValueError(f"a {self.type} pool needs source.{any_of[0]} or source.{any_of[1]}")
        if self.type in LOCAL_DEVICE_TYPES:
            for device in source.device:
                if not device.path.startswith("/dev/"):
                    raise ValueError(f"source.device path {device.path!r} of a {self.type} pool "
                                     f"must be a device under /dev/")
        if self.type == "dir" and self.source is not None:
            raise ValueError("a dir pool takes no source; remove source")
        return self


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
