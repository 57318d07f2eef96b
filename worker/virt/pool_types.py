"""What this worker can do with each libvirt pool type: one declarative table, read by the handlers
(which refuse an operation a type lacks before anything is touched), by the pool object
(`operations`) and by host.info (`pool_capabilities`).

Measured on libvirt 9.0.0 (tests/integration/test_fs_pools.py, test_disk_pools.py,
test_iscsi_direct_pools.py and the dir pool tests): dir, fs, disk, iscsi-direct; netfs pools define
and their volumes are those of fs, but they cannot start on a host without an NFS client. The other
types follow libvirt's backend table (which of createVol, buildVolFrom, deleteVol, resizeVol,
uploadVol, downloadVol and wipeVol each src/storage/storage_backend_*.c has) and which pool types
libvirt turns into a guest disk (not mpath, rbd, sheepdog, gluster: "using '<type>' pools for
backing 'volume' disks isn't yet supported").

Operations are named as in the contract: the volume operation's name after `volume.`. `clone`
means volumes can be cloned into a pool of the type; the source of a clone must be readable on this
host, i.e. its pool must allow `download`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from messages.objects import VOLUME_OPERATIONS, VolumeOperation
from worker.errors import unsupported


@dataclass(frozen=True)
class PoolKind:
    operations: frozenset[VolumeOperation]
    # Volumes are files with a format of their own (raw when the command names none).
    file_volumes: bool = False
    # build writes a filesystem, a partition table or an LVM label on a device: it can be told to
    # overwrite what is there or spare it.
    formats_device: bool = False
    # Volumes are partitions, named as the kernel names them (loop0p1, sda2).
    partitions: bool = False
    # start mounts a filesystem at the target: its root holds the filesystem's own lost+found.
    mounts: bool = False
    # The wipe algorithms the backend has; None: all of them.
    wipe_algorithms: frozenset[str] | None = None
    # Why the missing operations are missing, for the `unsupported` message.
    lacking: str = ""


def _ops(*names: VolumeOperation) -> frozenset[VolumeOperation]:
    return frozenset(names)


_ALL = frozenset(VOLUME_OPERATIONS)
_LUNS = "its volumes are LUNs or devices that exist on their own: they are made, removed and sized elsewhere"

POOL_TYPES: dict[str, PoolKind] = {
    "dir": PoolKind(_ALL, file_volumes=True),
    "fs": PoolKind(_ALL, file_volumes=True, formats_device=True, mounts=True),
    "netfs": PoolKind(_ALL, file_volumes=True, mounts=True),
    "logical": PoolKind(_ALL - {"resize"}, formats_device=True,
                        lacking="libvirt's logical backend cannot resize a logical volume"),
    "disk": PoolKind(_ALL - {"resize"}, formats_device=True, partitions=True,
                     lacking="a partition's size is fixed in the partition table (libvirt cannot change it)"),
    "iscsi": PoolKind(_ops("upload", "download", "wipe", "attach"), lacking=_LUNS),
    "iscsi-direct": PoolKind(_ops("wipe", "attach"), wipe_algorithms=frozenset({"zero"}),
                             lacking="its volumes are the target's LUNs, made, removed and sized on the "
                                     "iSCSI target; libvirt reaches them over the network (libiscsi) only "
                                     "to list and zero them"),
    "scsi": PoolKind(_ops("upload", "download", "wipe", "attach"), lacking=_LUNS),
    "mpath": PoolKind(_ops("upload", "download", "wipe"),
                      lacking=_LUNS + "; libvirt cannot attach a multipath volume as a guest disk"),
    "rbd": PoolKind(_ops("create", "delete", "resize", "wipe", "clone"),
                    lacking="libvirt's rbd backend has no streams, and it cannot attach an rbd volume by "
                            "pool and name"),
    "sheepdog": PoolKind(_ops("create", "delete", "resize"), lacking="libvirt's sheepdog backend has no more"),
    "gluster": PoolKind(_ops("delete"), lacking="libvirt's gluster backend only lists and deletes volumes"),
    "zfs": PoolKind(_ops("create", "delete", "upload", "download", "attach"),
                    lacking="libvirt's zfs backend cannot resize, wipe or clone a volume"),
    "vstorage": PoolKind(_ALL, file_volumes=True),
}

_UNKNOWN = PoolKind(frozenset(), lacking="this worker does not know the pool type")


def kind_of(pool_type: str) -> PoolKind:
    return POOL_TYPES.get(pool_type, _UNKNOWN)


def operations(pool_type: str) -> list[VolumeOperation]:
    """The volume operations this worker can run on a pool of the type, in the contract's order."""
    kind = kind_of(pool_type)
    return [op for op in VOLUME_OPERATIONS if op in kind.operations]


def require(pool_type: str, operation: VolumeOperation, pool: str) -> None:
    """Refuse (`unsupported`) an operation the pool's type lacks, naming the type, the operation and
    what can be done there instead."""
    kind = kind_of(pool_type)
    if operation in kind.operations:
        return
    why = kind.lacking or f"libvirt's {pool_type} backend has no volume {operation}"
    can = ", ".join(operations(pool_type)) or "none"
    raise unsupported(f"volume.{operation} is not supported on {pool_type} pools (pool {pool!r}): {why}. "
                      f"Volume operations this worker can run on {pool_type} pools: {can}")


def require_clone_source(pool_type: str, pool: str) -> None:
    """A clone reads its source on this host: the source's pool must allow `download`."""
    kind = kind_of(pool_type)
    if "download" in kind.operations:
        return
    why = kind.lacking or f"libvirt's {pool_type} backend cannot read its volumes"
    raise unsupported(f"volume.clone cannot copy a volume of {pool_type} pool {pool!r}: {why}")


def require_wipe_algorithm(pool_type: str, algorithm: str, pool: str) -> None:
    allowed = kind_of(pool_type).wipe_algorithms
    if allowed is not None and algorithm not in allowed:
        raise unsupported(f"volume.wipe with algorithm {algorithm!r} is not supported on {pool_type} pools "
                          f"(pool {pool!r}): libvirt's {pool_type} backend wipes with "
                          f"{', '.join(repr(a) for a in sorted(allowed))} only")


FILESYSTEM_OWN = "lost+found"


def hidden(volume_name: str, pool_type: Callable[[], str]) -> bool:
    """True for an entry libvirt lists as a volume that is the filesystem's own, not a volume:
    lost+found at the root of a filesystem libvirt mounted (ext2/3/4 make it; fsck uses it). fs and
    netfs pools do not report it, in listings, look-ups and re-listings alike. `pool_type` is asked
    only for that name (it may cost a round trip)."""
    return volume_name == FILESYSTEM_OWN and kind_of(pool_type()).mounts
