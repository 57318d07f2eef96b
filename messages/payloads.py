"""What a succeeded command carries in `result`, per operation (docs/contract.md "Operations")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.fields import Size, Strict
from messages.objects import DiskObject, PoolObject, VolumeObject, VolumeOperation

Changed = Field(description="false when the host already was in the asked-for state")


class PoolCapability(Strict):
    type: str
    volume_formats: list[str] = Field(description="The volume formats libvirt accepts in a pool of this type "
                                                  "(virConnectGetStoragePoolCapabilities); empty: none")
    operations: list[VolumeOperation] = Field(description="The volume operations this worker can run there")


class HostInfo(Strict):
    host_id: str
    hostname: str
    uri: str
    libvirt_version: str
    worker_version: str
    pool_types: list[str]
    # version 2
    pool_capabilities: list[PoolCapability] = Field(
        default_factory=list, description="For each pool type libvirt supports here: volume formats and operations")


class PoolChange(PoolObject):
    changed: bool = Changed


class PoolUndefined(Strict):
    name: str
    changed: bool = Changed


class PoolList(Strict):
    pools: list[PoolObject]


class VolumeChange(VolumeObject):
    changed: bool = Changed


class VolumeResized(VolumeObject):
    changed: bool = Changed
    online: bool = Field(description="true when the volume was grown through the running domains that have it "
                                     "(virDomainBlockResize), so their guests see the new capacity")


class VolumeUploaded(VolumeObject):
    changed: bool = Changed
    bytes: Size = Field(description="data bytes sent, holes excluded")


class VolumeDownloaded(Strict):
    bytes: Size = Field(description="data bytes received, holes excluded")
    path: str


class VolumeDeleted(Strict):
    pool: str
    name: str
    changed: bool = Changed


class VolumeList(Strict):
    volumes: list[VolumeObject]


class DiskChange(DiskObject):
    changed: bool = Changed


class JobCancelState(Strict):
    id: str
    state: Literal["cancelling", "cancelled", "not_cancellable", "finished"]
