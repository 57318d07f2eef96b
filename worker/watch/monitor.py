"""The monitor: turns libvirt's pool callbacks, periodic re-listings and connection changes into
events (docs/contract.md "Events"), on one thread of its own.

    libvirt event loop --pool signal--> \\
    gateway --connected/disconnected-->  queue --> monitor thread --> EventPublisher
    handlers --touch(pool)-->           /         (pool lookups, listings, diffs, capacity)
    every RECONCILE_INTERVAL: re-list pools and volumes

Pool lifecycle events come from libvirt's callbacks while connected; after a reconnect the pools are
compared with the last known view, which publishes what changed while the worker was blind. Volume
events from outside the worker come from comparing listings (libvirt has no volume events).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import libvirt

from messages.events import CapacityEventData, EventType, PoolEventData, VolumeEventData
from messages.objects import PoolObject
from worker.watch.attribution import Attribution
from worker.watch.capacity import CapacityWatch, Level
from worker.config import Settings
from worker.errors import OperationError
from worker.transport.events import EventPublisher, worker_data
from worker.state.inventory import Inventory, diff_pools
from worker.telemetry.metrics import Metrics
from worker.virt import pool_events, pool_types
from worker.virt.describe import pool_object, volume_object
from worker.virt.gateway import LibvirtGateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PoolSignal:
    pool: str
    kind: EventType
    at: float  # time.monotonic() when libvirt's callback ran
    command_id: str | None  # the command that caused it, as known when the callback ran


@dataclass(frozen=True)
class _Connected:
    conn: libvirt.virConnect


@dataclass(frozen=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True)
class _Touch:
    pool: str


_STOP = object()
BATCH = 1000  # items taken from the queue at once
# A pool's capacity is looked at again this long after a command changed it, once for every command
# of that time: the look-up then never competes with the commands' own results (measured: answering
# it at once added 0.15–0.25 ms to each serial volume.create/delete).
TOUCH_DELAY = 0.2


class Monitor:
    def __init__(self, settings: Settings, gateway: LibvirtGateway, events: EventPublisher, inventory: Inventory,
                 attribution: Attribution, busy_volumes: Callable[[str], set[str]], metrics: Metrics | None = None,
                 forget_volume: Callable[[str], None] | None = None):
        """`busy_volumes(pool)` names the volumes of a pool that running commands hold locked;
        `forget_volume(key)` drops what the worker keeps about a volume deleted outside it."""
        self._settings = settings
        self._gateway = gateway
        self._events = events
        self._inventory = inventory
        self._attribution = attribution
        self._busy_volumes = busy_volumes
        self._metrics = metrics
        self._forget_volume = forget_volume
        self._capacity = CapacityWatch(settings.capacity_low)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._ever_connected = False
        self._blind = False

    # ---- inputs (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def on_connect(self, conn: libvirt.virConnect) -> None:
        """Gateway hook, run as a connection opens: register the pool callbacks on it."""
        pool_events.register(conn, self.pool_signal)
        self._queue.put(_Connected(conn))

    def on_disconnect(self, reason: str) -> None:
        self._queue.put(_Disconnected(reason))

    def pool_signal(self, pool: str, kind: EventType) -> None:
        self._queue.put(_PoolSignal(pool, kind, time.monotonic(), self._attribution.command_for(pool, kind)))

    def touch(self, pool: str) -> None:
        """A command changed what a pool holds: look at its capacity again."""
        self._queue.put(_Touch(pool))

    # ---- the monitor thread --------------------------------------------------------------------

    def _run(self) -> None:
        interval = self._settings.reconcile_interval
        next_pass = time.monotonic() + interval
        touched: set[str] = set()
        touch_due: float | None = None
        while True:
            due = next_pass if touch_due is None else min(next_pass, touch_due)
            try:
                batch = [self._queue.get(timeout=max(0.0, due - time.monotonic()))]
            except queue.Empty:
                batch = [None]
            while len(batch) < BATCH:  # whatever else is waiting is handled together
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                return
            touches = {item.pool for item in batch if isinstance(item, _Touch)}
            if touches:
                touched |= touches
                touch_due = touch_due or time.monotonic() + TOUCH_DELAY
            try:
                # The batch first: its signals happened before a listing made now, and are told
                # against the view they happened in.
                self._handle_batch([item for item in batch if item is not None and not isinstance(item, _Touch)])
                # Due, whether or not the queue went quiet: a steady stream of callbacks must not
                # starve the re-listing that finds what they do not report.
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + interval
                    if self._gateway.connected:
                        began = time.monotonic()
                        self._reconcile(publish_pool_changes=False)
                        if self._metrics is not None:
                            self._metrics.reconcile_seconds.set(time.monotonic() - began)
                if touch_due is not None and time.monotonic() >= touch_due:
                    names, touched, touch_due = touched, set(), None
                    self._recheck(names)
            except (libvirt.libvirtError, OperationError) as error:
                log.info("monitor pass interrupted by libvirt", extra={"error": str(error)})
            except Exception:
                log.exception("monitor pass failed")

    def _handle_batch(self, items: list[object]) -> None:
        """In arrival order, but each run of pool signals together."""
        signals: list[_PoolSignal] = []
        for item in items:
            if isinstance(item, _PoolSignal):
                signals.append(item)
                continue
            if signals:
                self._on_pool_signals(signals)
                signals = []
            self._handle(item)
        if signals:
            self._on_pool_signals(signals)

    def _recheck(self, touched: set[str]) -> None:
        """The pools commands changed: sizes into the inventory, capacity events."""
        for name in touched:
            pool = self._lookup(name)
            if pool is not None:
                self._inventory.set_pool(pool)
                self._check_capacity(pool)

    def _handle(self, item: object) -> None:
        if isinstance(item, _Connected):
            first = not self._ever_connected
            self._ever_connected = True
            self._blind = False
            if first:
                self._take_inventory()
            else:
                self._worker_event(EventType.libvirt_reconnected, None)
                self._reconcile(publish_pool_changes=True)
        elif isinstance(item, _Disconnected):
            if not self._blind:
                self._blind = True
                self._worker_event(EventType.libvirt_disconnected, item.reason)

    def _conn(self) -> libvirt.virConnect:
        return self._gateway.connection()

    def _lookup(self, name: str, fresh: bool = False) -> PoolObject | None:
        """The pool now; with `fresh`, every field asked for again (after a (re)definition)."""
        handle = self._gateway.pool(name)
        if handle is None:
            return None
        try:
            return pool_object(handle, None if fresh else self._inventory.pool(name))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                self._gateway.forget_pools(name)
                return None
            raise

    def _on_pool_signals(self, signals: list[_PoolSignal]) -> None:
        """Publish each signal in order; look each pool up once for the whole run of signals."""
        redefined = {s.pool for s in signals if s.kind in (EventType.pool_defined, EventType.pool_undefined)}
        for name in redefined:
            self._gateway.forget_pools(name)
        before = {s.pool: self._inventory.last_known(s.pool) for s in signals}
        now = {name: self._lookup(name, fresh=name in redefined) for name in before}
        relist: set[str] = set()
        for signal in signals:
            # A pool that is gone, or the one an undefine removed, is published as last known.
            last = before[signal.pool] if signal.kind is EventType.pool_undefined else None
            pool = last or now[signal.pool] or before[signal.pool]
            if pool is None:
                log.info("pool event for a pool never seen", extra={"pool": signal.pool, "event": signal.kind.value})
                continue
            self._events.emit(signal.kind, PoolEventData(pool=pool), subject=f"pools/{pool.name}",
                              command_id=signal.command_id, observed_at=signal.at)
            if signal.kind in (EventType.pool_refreshed, EventType.pool_started):
                relist.add(signal.pool)
        for name, pool in now.items():
            if pool is None:
                self._inventory.forget_pool(name)
                self._capacity.forget(name)
                continue
            self._inventory.set_pool(pool)
            if name in relist and pool.state.value == "running":
                self._per_pool(name, lambda name=name: self._reconcile_volumes(name))
            self._check_capacity(pool)

    def _listed_pools(self) -> tuple[dict[str, libvirt.virStoragePool], dict[str, PoolObject]]:
        """Every pool and its description; a pool that cannot be described (gone since the
        listing, or broken) is left out of this pass rather than ending it."""
        handles, described = {}, {}
        for handle in self._conn().listAllStoragePools(0):
            name = handle.name()
            try:
                described[name] = pool_object(handle)
            except libvirt.libvirtError as error:
                log.warning("cannot describe pool; skipped in this pass", extra={"pool": name, "error": str(error)})
                continue
            handles[name] = handle
        return handles, described

    def _per_pool(self, name: str, action: Callable[[], None]) -> None:
        """One pool's trouble (a missing directory, a volume libvirt cannot read) stays its own."""
        try:
            action()
        except libvirt.libvirtError as error:
            log.warning("cannot list the volumes of pool; skipped in this pass",
                        extra={"pool": name, "error": str(error)})

    def _take_inventory(self) -> None:
        """First connection: learn what is there without publishing it as changes."""
        handles, pools = self._listed_pools()
        self._inventory.replace_pools(pools.values())
        for name, pool in pools.items():
            if pool.state.value == "running":
                self._per_pool(name, lambda name=name: self._inventory.set_volumes(
                    name, self._volume_objects(name, handles[name])))
            self._check_capacity(pool)
        log.info("inventory taken", extra={"pools": len(pools), "volumes": self._inventory.volume_count()})

    def _reconcile(self, *, publish_pool_changes: bool) -> None:
        """Re-list pools and volumes; publish volume changes made outside the worker, and after a
        reconnect also the pool changes libvirt's callbacks could not report."""
        pools, now = self._listed_pools()
        if publish_pool_changes:
            changes = diff_pools(self._inventory.pools(), now)
            for kind, changed in ((EventType.pool_defined, changes.defined), (EventType.pool_started, changes.started),
                                  (EventType.pool_stopped, changes.stopped),
                                  (EventType.pool_undefined, changes.undefined)):
                for pool in changed:
                    self._events.emit(kind, PoolEventData(pool=pool), subject=f"pools/{pool.name}")
        self._inventory.replace_pools(now.values())
        for name, pool in now.items():
            if pool.state.value == "running":
                self._per_pool(name, lambda name=name: self._reconcile_volumes(name, pools[name]))
            self._check_capacity(pool)

    def _reconcile_volumes(self, pool_name: str, handle: libvirt.virStoragePool | None = None) -> None:
        handle = handle or self._conn().storagePoolLookupByName(pool_name)
        if not self._inventory.listed(pool_name):
            self._inventory.set_volumes(pool_name, self._volume_objects(pool_name, handle))
            return
        busy = self._busy_volumes(pool_name)
        listed_at = self._inventory.now()
        kind = partial(self._gateway.pool_type, handle)  # asked only for lost+found
        names = {name for name in handle.listVolumes() if not pool_types.hidden(name, kind)}
        created, deleted = self._inventory.compare(pool_name, names, listed_at, busy | self._busy_volumes(pool_name))
        for volume in deleted:
            self._volume_event(EventType.volume_deleted, volume)
            if self._forget_volume is not None:
                self._forget_volume(volume.key)
        for name in sorted(created):
            try:
                volume = volume_object(pool_name, handle.storageVolLookupByName(name))
            except libvirt.libvirtError:
                continue  # gone again before we looked
            self._inventory.put_volume(volume, by_command=False)
            self._volume_event(EventType.volume_created, volume)

    def _volume_objects(self, pool_name: str, handle: libvirt.virStoragePool) -> list:
        """The pool's volumes, without what is the filesystem's own (lost+found of a mounted pool)."""
        kind = partial(self._gateway.pool_type, handle)
        return [volume_object(pool_name, v) for v in handle.listAllVolumes(0) if not pool_types.hidden(v.name(), kind)]

    def _volume_event(self, kind: EventType, volume) -> None:
        self._events.emit(kind, VolumeEventData(pool=volume.pool, volume=volume, origin="external"),
                          subject=f"pools/{volume.pool}/volumes/{volume.name}")

    def _check_capacity(self, pool: PoolObject) -> None:
        level = self._capacity.observe(pool)
        if level is None:
            return
        kind = EventType.pool_capacity_low if level is Level.low else EventType.pool_capacity_ok
        self._events.emit(kind, CapacityEventData(pool=pool, threshold=self._settings.capacity_low),
                          subject=f"pools/{pool.name}")

    def _worker_event(self, kind: EventType, reason: str | None) -> None:
        self._events.emit(kind, worker_data(self._settings.host_id, self._settings.libvirt_uri, reason),
                          subject=f"workers/{self._settings.host_id}")
