"""The operation table: every operation of the contract (docs/contract.md, "Operations"), declared
once, with what the rest of the system needs to know about it.

An entry says what an operation *is*: its argument and result models, the pools, volumes and
domains it names (and so what it locks, what the authorization policy checks, and which pool's
libvirt events it may cause), whether it only reads, whether the journal takes custody of it at
once, whether job.cancel can stop it while it runs, and whether the worker answers it from its own
state. The worker binds each entry to its handler with `@handles(<constant>)` next to the handler;
the scheduler, the policy, event attribution, the service and the AsyncAPI generator read the table
and never switch on an operation's name.

Adding an operation: an args model (and a result model) in `messages/`, one entry here, one handler
decorated with `@handles(...)` in `worker/handlers/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel

from messages import payloads as p
from messages import pools as pl
from messages import volumes as vl
from messages.events import EventType
from messages.objects import PoolObject, VolumeObject


def read_path(args: BaseModel, path: str) -> Any:
    """The value at a dotted path of the args ("backing.pool"); "a|b" is a, or b when a is not set.
    None where a step is missing or unset."""
    for alternative in path.split("|"):
        value: Any = args
        for step in alternative.split("."):
            value = getattr(value, step, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class PoolRef:
    """The command names a pool (args field `field`). `whole`: it acts on the pool as a whole, so it
    waits for the running volume operations in it (else it only looks at the pool)."""

    field: str = "name"
    whole: bool = True

    def pool_field(self) -> str:
        return self.field


@dataclass(frozen=True)
class VolumeRef:
    """The command names a volume by its pool's and its own args fields. `writes`: it changes the
    volume (else it only reads it). Either way it uses the pool without changing the pool itself."""

    pool: str = "pool"
    name: str = "name"
    writes: bool = False

    def pool_field(self) -> str:
        return self.pool


@dataclass(frozen=True)
class DomainRef:
    """The command changes a guest domain (args field `field`)."""

    field: str = "domain"

    def pool_field(self) -> None:
        return None


Resource = Union[PoolRef, VolumeRef, DomainRef]


@dataclass(frozen=True, kw_only=True)
class Operation:
    name: str
    args: type[BaseModel]
    result: type[BaseModel]
    summary: str
    # What the command names, in the order the policy reports them. The first pool named is the one
    # whose libvirt events the command may cause.
    uses: tuple[Resource, ...] = ()
    # Changes nothing on the host: locks nothing, and is written to the journal only with its result.
    read_only: bool = False
    # Runs for long (progress events): the journal takes custody of it at once.
    long_running: bool = False
    # A running command stops promptly on job.cancel.
    cancellable: bool = False
    # Answered by the worker from its own state on the intake thread (never waits for an executor).
    control: bool = False
    # The pool events libvirt sends because of this operation (see worker/watch/attribution.py).
    causes: frozenset[EventType] = frozenset()

    def pools_named(self, args: BaseModel) -> list[tuple[str, str]]:
        """(args path, pool name) for every pool the command names, in declaration order, each
        pool once. A path with a fallback ("source_pool|pool") is reported by the field that was set."""
        found: list[tuple[str, str]] = []
        for resource in self.uses:
            path = resource.pool_field()
            if path is None:
                continue
            for alternative in path.split("|"):
                pool = read_path(args, alternative)
                if pool is not None:
                    if all(pool != seen for _, seen in found):
                        found.append((alternative, pool))
                    break
        return found

    def event_pool(self, args: BaseModel) -> str | None:
        """The pool whose libvirt events this command may cause, or None when it causes none."""
        if not self.causes:
            return None
        named = self.pools_named(args)
        return named[0][1] if named else None


_POOL = (PoolRef(),)
_VOLUME_WRITE = (VolumeRef(writes=True),)
_VOLUME_READ = (VolumeRef(),)
_BACKING = VolumeRef(pool="backing.pool", name="backing.name")
_E = EventType

HOST_INFO = Operation(name="host.info", args=vl.NoArgs, result=p.HostInfo, read_only=True,
                      summary="Describe the host, its libvirt and the pool types it supports")
POOL_DEFINE = Operation(name="pool.define", args=pl.PoolDefineArgs, result=p.PoolChange, uses=_POOL,
                        causes=frozenset({_E.pool_defined, _E.pool_undefined, _E.pool_started, _E.pool_built}),
                        summary="Define a persistent pool; optionally build, start, autostart it")
POOL_BUILD = Operation(name="pool.build", args=pl.PoolBuildArgs, result=p.PoolChange, uses=_POOL,
                       causes=frozenset({_E.pool_built}), summary="Build the pool's underlying storage")
POOL_START = Operation(name="pool.start", args=pl.PoolStartArgs, result=p.PoolChange, uses=_POOL,
                       causes=frozenset({_E.pool_started, _E.pool_built}), summary="Start (activate) the pool")
POOL_STOP = Operation(name="pool.stop", args=pl.PoolNameArgs, result=p.PoolChange, uses=_POOL,
                      causes=frozenset({_E.pool_stopped}), summary="Stop (destroy) the pool; its data is kept")
POOL_DELETE = Operation(name="pool.delete", args=pl.PoolNameArgs, result=p.PoolChange, uses=_POOL,
                        causes=frozenset({_E.pool_deleted}),
                        summary="Remove the pool's underlying storage; the pool must be stopped")
POOL_UNDEFINE = Operation(name="pool.undefine", args=pl.PoolNameArgs, result=p.PoolUndefined, uses=_POOL,
                          causes=frozenset({_E.pool_undefined}), summary="Remove the pool's definition")
POOL_AUTOSTART = Operation(name="pool.autostart", args=pl.PoolAutostartArgs, result=p.PoolChange, uses=_POOL,
                           summary="Turn autostart on or off")
POOL_REFRESH = Operation(name="pool.refresh", args=pl.PoolNameArgs, result=p.PoolChange, uses=_POOL,
                         causes=frozenset({_E.pool_refreshed}), summary="Re-read the pool's volumes from its storage")
POOL_INFO = Operation(name="pool.info", args=pl.PoolNameArgs, result=PoolObject, uses=(PoolRef(whole=False),),
                      read_only=True,
                      summary="Describe one pool")
POOL_LIST = Operation(name="pool.list", args=pl.PoolListArgs, result=p.PoolList, read_only=True,
                      summary="List pools, optionally by state")
# The worker refreshes a disk pool after changing its partition table itself (worker/handlers/partitions.py).
_PARTITIONS = frozenset({_E.pool_refreshed})
VOLUME_CREATE = Operation(name="volume.create", args=vl.VolumeCreateArgs, result=p.VolumeChange,
                          uses=(*_VOLUME_WRITE, _BACKING), causes=_PARTITIONS, summary="Create a volume")
VOLUME_CLONE = Operation(name="volume.clone", args=vl.VolumeCloneArgs, result=p.VolumeChange,
                         uses=(*_VOLUME_WRITE, VolumeRef(pool="source_pool|pool", name="source")),
                         long_running=True, cancellable=True, causes=_PARTITIONS,
                         summary="Create a volume as a copy of another")
VOLUME_RESIZE = Operation(name="volume.resize", args=vl.VolumeResizeArgs, result=p.VolumeResized,
                          uses=_VOLUME_WRITE, summary="Change a volume's capacity")
VOLUME_WIPE = Operation(name="volume.wipe", args=vl.VolumeWipeArgs, result=p.VolumeChange, uses=_VOLUME_WRITE,
                        long_running=True, summary="Overwrite a volume's data")
VOLUME_UPLOAD = Operation(name="volume.upload", args=vl.VolumeUploadArgs, result=p.VolumeUploaded,
                          uses=_VOLUME_WRITE, long_running=True, cancellable=True,
                          causes=frozenset({_E.pool_refreshed}),  # libvirt refreshes the pool after an upload
                          summary="Write a file or URL into an existing volume")
VOLUME_DOWNLOAD = Operation(name="volume.download", args=vl.VolumeDownloadArgs, result=p.VolumeDownloaded,
                            uses=_VOLUME_READ, long_running=True, cancellable=True,
                            summary="Copy a volume's content to a file")
VOLUME_DELETE = Operation(name="volume.delete", args=vl.VolumeDeleteArgs, result=p.VolumeDeleted,
                          uses=_VOLUME_WRITE, causes=_PARTITIONS, summary="Delete a volume, optionally wiping it first")
VOLUME_INFO = Operation(name="volume.info", args=vl.VolumeNameArgs, result=VolumeObject, uses=_VOLUME_READ,
                        read_only=True, summary="Describe one volume")
VOLUME_LIST = Operation(name="volume.list", args=vl.VolumeListArgs, result=p.VolumeList,
                        uses=(PoolRef("pool", whole=False),), read_only=True, summary="List a pool's volumes")
VOLUME_ATTACH = Operation(name="volume.attach", args=vl.VolumeAttachArgs, result=p.DiskChange,
                          uses=(*_VOLUME_READ, DomainRef()),
                          summary="Attach a volume to a guest as a disk, by pool and volume name")
VOLUME_DETACH = Operation(name="volume.detach", args=vl.VolumeDetachArgs, result=p.DiskChange, uses=(DomainRef(),),
                          summary="Detach a disk from a guest")
JOB_CANCEL = Operation(name="job.cancel", args=vl.JobCancelArgs, result=p.JobCancelState, control=True,
                       summary="Cancel a queued or running command")

# Every entry above, in the order written (a module's names keep their definition order).
OPERATIONS: dict[str, Operation] = {entry.name: entry for entry in list(globals().values())
                                    if isinstance(entry, Operation)}
