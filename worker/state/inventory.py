"""The worker's last known view of the host's pools and volumes, and what changed since.

libvirt has no volume events, so the worker keeps this view and compares each fresh listing with
it. The worker's own operations update the view as they happen (their events are published by the
handlers) and mark the names they touched, so a comparison reports only what changed outside the
worker: names a command touched after the listing began, or holds locked, are left to it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from messages.objects import PoolObject, VolumeObject


@dataclass(frozen=True)
class PoolChanges:
    defined: list[PoolObject] = field(default_factory=list)
    undefined: list[PoolObject] = field(default_factory=list)
    started: list[PoolObject] = field(default_factory=list)
    stopped: list[PoolObject] = field(default_factory=list)


def diff_pools(known: dict[str, PoolObject], now: dict[str, PoolObject]) -> PoolChanges:
    changes = PoolChanges()
    for name, pool in now.items():
        before = known.get(name)
        running = pool.state.value == "running"
        if before is None:
            changes.defined.append(pool)
            if running:
                changes.started.append(pool)
        elif before.state.value != "running" and running:
            changes.started.append(pool)
        elif before.state.value == "running" and not running:
            changes.stopped.append(pool)
    for name, pool in known.items():
        if name not in now:
            changes.undefined.append(pool)
    return changes


#: pools kept as last known after they left the view (see Inventory.last_known)
GONE_POOLS = 1024


class Inventory:
    """Thread-safe store of the last known pool and volume objects."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: dict[str, PoolObject] = {}
        self._gone: OrderedDict[str, PoolObject] = OrderedDict()
        self._volumes: dict[str, dict[str, VolumeObject]] = {}
        self._touched: dict[tuple[str, str], float] = {}

    def now(self) -> float:
        return self._clock()

    # ---- pools --------------------------------------------------------------------------------

    def pools(self) -> dict[str, PoolObject]:
        with self._lock:
            return dict(self._pools)

    def pool(self, name: str) -> PoolObject | None:
        with self._lock:
            return self._pools.get(name)

    def last_known(self, name: str) -> PoolObject | None:
        """The pool, or as it was when it left the view. A re-listing can drop a pool that an
        undefine removed before libvirt's callback for it arrives; the event still needs the pool."""
        with self._lock:
            return self._pools.get(name) or self._gone.get(name)

    def set_pool(self, pool: PoolObject) -> None:
        with self._lock:
            self._pools[pool.name] = pool
            self._gone.pop(pool.name, None)

    def replace_pools(self, pools: Iterable[PoolObject]) -> None:
        with self._lock:
            before, self._pools = self._pools, {pool.name: pool for pool in pools}
            for name in set(before) - set(self._pools):
                self._keep_gone(before[name])
            for name in self._pools:
                self._gone.pop(name, None)
            for name in set(self._volumes) - set(self._pools):
                del self._volumes[name]

    def forget_pool(self, name: str) -> None:
        with self._lock:
            pool = self._pools.pop(name, None)
            if pool is not None:
                self._keep_gone(pool)
            self._volumes.pop(name, None)

    def _keep_gone(self, pool: PoolObject) -> None:
        self._gone[pool.name] = pool
        self._gone.move_to_end(pool.name)
        while len(self._gone) > GONE_POOLS:
            self._gone.popitem(last=False)

    # ---- volumes ------------------------------------------------------------------------------

    def listed(self, pool: str) -> bool:
        with self._lock:
            return pool in self._volumes

    def volume_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._volumes.values())

    def volumes(self, pool: str) -> dict[str, VolumeObject] | None:
        """The known volumes of a pool by name, None when the pool has not been listed."""
        with self._lock:
            known = self._volumes.get(pool)
            return None if known is None else dict(known)

    def set_volumes(self, pool: str, volumes: Iterable[VolumeObject]) -> None:
        """A pool's complete listing, taken without comparing (first sight of the pool)."""
        with self._lock:
            self._volumes[pool] = {v.name: v for v in volumes}

    def put_volume(self, volume: VolumeObject, *, by_command: bool = True) -> None:
        with self._lock:
            if by_command:
                self._touched[(volume.pool, volume.name)] = self._clock()
            self._volumes.setdefault(volume.pool, {})[volume.name] = volume

    def drop_volume(self, pool: str, name: str) -> None:
        with self._lock:
            self._touched[(pool, name)] = self._clock()
            self._volumes.get(pool, {}).pop(name, None)

    def compare(self, pool: str, names: set[str], listed_at: float,
                skip: set[str] = frozenset()) -> tuple[set[str], list[VolumeObject]]:
        """Compare a listing of volume names taken at `listed_at` with the view, and apply it:
        returns (names created outside the worker, objects of volumes deleted outside it). Created
        names are not in the view until `put_volume(..., by_command=False)` adds their objects."""
        with self._lock:
            known = self._volumes.setdefault(pool, {})
            ignored = set(skip) | {name for (p, name), at in self._touched.items() if p == pool and at >= listed_at}
            created = {name for name in names - set(known) if name not in ignored}
            deleted = [known.pop(name) for name in sorted(set(known) - names - ignored)]
            self._touched = {key: at for key, at in self._touched.items() if at >= listed_at}
            return created, deleted
