"""The resource objects results and events carry (docs/contract.md "Operations")."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from messages.fields import Size, Strict

# What a control plane can ask of a pool's volumes, by the name of the operation after `volume.`
# (version 2: pool object `operations`, host.info `pool_capabilities`).
VolumeOperation = Literal["create", "delete", "resize", "upload", "download", "wipe", "clone", "attach"]
VOLUME_OPERATIONS: tuple[VolumeOperation, ...] = ("create", "delete", "resize", "upload", "download", "wipe",
                                                  "clone", "attach")


class PoolState(str, Enum):
    inactive = "inactive"
    building = "building"
    running = "running"
    degraded = "degraded"
    inaccessible = "inaccessible"


class PoolObject(Strict):
    name: str
    uuid: str
    type: str
    state: PoolState
    persistent: bool
    autostart: bool
    capacity: Size
    allocation: Size
    available: Size
    target_path: str | None
    # version 2
    operations: list[VolumeOperation] = Field(
        default_factory=list, description="The volume operations this worker can run on a pool of this type")


class BackingStore(Strict):
    """A volume's backing store: the pool's volume it is, or, when it is no pool's volume, only its
    path (`pool` and `name` null)."""

    pool: str | None
    name: str | None
    path: str
    format: str | None


class VolumeObject(Strict):
    pool: str
    name: str
    key: str
    path: str
    type: str
    format: str | None
    capacity: Size
    allocation: Size
    # version 2
    physical: Size = Field(0, description="Bytes the volume's storage holds on disk (libvirt's physical size: "
                                          "a file's length, a device's size)")
    backing: BackingStore | None = Field(None, description="The volume's direct backing store; null when it has none")
    backing_chain: list[BackingStore] | None = Field(
        None, description="Every link of the backing chain, from the direct backing store to the root; [] when "
                          "the volume has no backing store; null where the command did not look")
    in_use_by: list[str] | None = Field(None, description="Domains whose definition or running state uses the "
                                                          "volume; null where the command did not look")


class DiskObject(Strict):
    domain: str
    target: str
    pool: str
    name: str
