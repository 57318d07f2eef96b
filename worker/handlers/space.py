"""`no_space`: a volume that does not fit in its pool, told apart from every other failure.

Two ways to find out. Before: a volume whose bytes are all allocated when it is made (a raw file
with an allocation, a partition) is checked against the pool's available bytes — the figure
libvirt keeps and checks itself before a resize with ALLOCATE — so nothing is started that cannot
end. After: whatever libvirt says about running out of space (ENOSPC from a write or qemu-img, "no
large enough free extent" for a partition; worker/virt/errors.is_no_space) is reported the same
way. Either way the message gives the bytes needed and the bytes available. libvirt removes the
file of a create or clone that ran out of space itself (measured on ext4 and xfs, for allocated raw
files, raw copies and qemu-img conversions; tests/integration/test_pool_space.py checks that no
file is left).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.errors import details, is_no_space
from worker.virt.pool_types import PoolKind

# Formats libvirt writes itself (allocating `allocation` bytes up front); qemu-img formats ignore
# the allocation asked for.
_ALLOCATED_FORMATS = frozenset({"raw", None})


def to_allocate(kind: PoolKind, fmt: str | None, capacity: int, allocation: int) -> int:
    """Bytes a new volume takes from the pool at once: a partition's whole size, a raw file's
    allocation; 0 where that is not known before (qcow2 and other image formats grow on write)."""
    if kind.partitions:
        return capacity
    if kind.file_volumes:
        return allocation if fmt in _ALLOCATED_FORMATS else 0
    return allocation


def available(pool: libvirt.virStoragePool) -> tuple[int, int]:
    """(capacity, available) of the pool, as libvirt last measured it."""
    _state, capacity, _allocation, free = pool.info()
    return capacity, free


def check_fits(pool: libvirt.virStoragePool, pool_name: str, needed: int, needs: str) -> None:
    """`no_space` when `needed` bytes are more than the pool has available; `needs` says so in
    words ("volume 'a' needs 1048576 bytes"). Pools that report no capacity (their sizes are not
    libvirt's to know) are not checked."""
    if needed <= 0:
        return
    capacity, free = available(pool)
    if capacity > 0 and needed > free:
        raise no_space(needs, pool_name, free)


def no_space(needs: str, pool_name: str, free: int, libvirt_error: libvirt.libvirtError | None = None
             ) -> OperationError:
    return OperationError(
        ErrorCode.no_space,
        f"{needs}, but pool {pool_name!r} has {free} bytes available; free space in the pool, or place the "
        f"volume in another pool (space freed outside the worker counts after pool.refresh)",
        libvirt=details(libvirt_error) if libvirt_error is not None else None)


@contextmanager
def reported(pool: libvirt.virStoragePool, pool_name: str, needs: str) -> Iterator[None]:
    """Turns libvirt's running out of space inside the block into `no_space` with the pool's
    available bytes; every other error passes unchanged."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if not is_no_space(exc):
            raise
        try:
            free = available(pool)[1]
        except libvirt.libvirtError:
            free = 0
        raise no_space(needs, pool_name, free, exc) from None
