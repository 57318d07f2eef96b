"""Whether a volume that exists already is the one a create or clone asks for."""

from __future__ import annotations

from messages.objects import VolumeObject
from worker.virt.partitions import ROUNDING
from worker.virt.pool_types import PoolKind


def differences(kind: PoolKind, held: VolumeObject, capacity: int, fmt: str | None) -> list[str]:
    """How an existing volume differs from the one asked for. A partition is as asked when it is at
    most ROUNDING bytes larger (libvirt aligns partitions) and of the asked-for type or of type
    "none" (libvirt reads every partition back as "none" after a refresh)."""
    found = []
    if kind.partitions:
        same_capacity = capacity <= held.capacity < capacity + ROUNDING
        same_format = fmt is None or held.format in (fmt, "none")
    else:
        same_capacity, same_format = held.capacity == capacity, fmt is None or held.format == fmt
    if not same_capacity:
        found.append(f"capacity is {held.capacity} on the host, the command asks for {capacity}")
    if not same_format:
        found.append(f"format is {held.format!r} on the host, the command asks for {fmt!r}")
    return found
