"""The operation table: every op of CONTRACT §3 with its argument and result models."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from messages import payloads as p
from messages import pools as pl
from messages import volumes as vl
from messages.objects import PoolObject, VolumeObject


@dataclass(frozen=True)
class Operation:
    name: str
    args: type[BaseModel]
    result: type[BaseModel]
    summary: str
    long_running: bool = False
    cancellable: bool = False  # a running command stops promptly on job.cancel (stream transfers)
    read_only: bool = False  # changes nothing on the host


_TABLE = [
    Operation("host.info", vl.NoArgs, p.HostInfo, "Describe the host, its libvirt and the pool types it supports",
              read_only=True),
    Operation("pool.define", pl.PoolDefineArgs, p.PoolChange, "Define a persistent pool; optionally build, start, autostart it"),
    Operation("pool.build", pl.PoolBuildArgs, p.PoolChange, "Build the pool's underlying storage"),
    Operation("pool.start", pl.PoolStartArgs, p.PoolChange, "Start (activate) the pool"),
    Operation("pool.stop", pl.PoolNameArgs, p.PoolChange, "Stop (destroy) the pool; its data is kept"),
    Operation("pool.delete", pl.PoolNameArgs, p.PoolChange, "Remove the pool's underlying storage; the pool must be stopped"),
    Operation("pool.undefine", pl.PoolNameArgs, p.PoolUndefined, "Remove the pool's definition"),
    Operation("pool.autostart", pl.PoolAutostartArgs, p.PoolChange, "Turn autostart on or off"),
    Operation("pool.refresh", pl.PoolNameArgs, p.PoolChange, "Re-read the pool's volumes from its storage"),
    Operation("pool.info", pl.PoolNameArgs, PoolObject, "Describe one pool", read_only=True),
    Operation("pool.list", pl.PoolListArgs, p.PoolList, "List pools, optionally by state", read_only=True),
    Operation("volume.create", vl.VolumeCreateArgs, p.VolumeChange, "Create a volume"),
    Operation("volume.clone", vl.VolumeCloneArgs, p.VolumeChange, "Create a volume as a copy of another", True),
    Operation("volume.resize", vl.VolumeResizeArgs, p.VolumeChange, "Change a volume's capacity"),
    Operation("volume.wipe", vl.VolumeWipeArgs, p.VolumeChange, "Overwrite a volume's data", True),
    Operation("volume.upload", vl.VolumeUploadArgs, p.VolumeUploaded, "Write a file or URL into an existing volume", True, True),
    Operation("volume.download", vl.VolumeDownloadArgs, p.VolumeDownloaded, "Copy a volume's content to a file", True, True),
    Operation("volume.delete", vl.VolumeDeleteArgs, p.VolumeDeleted, "Delete a volume, optionally wiping it first"),
    Operation("volume.info", vl.VolumeNameArgs, VolumeObject, "Describe one volume", read_only=True),
    Operation("volume.list", vl.VolumeListArgs, p.VolumeList, "List a pool's volumes", read_only=True),
    Operation("volume.attach", vl.VolumeAttachArgs, p.DiskChange, "Attach a volume to a guest as a disk, by pool and volume name"),
    Operation("volume.detach", vl.VolumeDetachArgs, p.DiskChange, "Detach a disk from a guest"),
    Operation("job.cancel", vl.JobCancelArgs, p.JobCancelState, "Cancel a queued or running command"),
]

OPERATIONS: dict[str, Operation] = {op.name: op for op in _TABLE}
