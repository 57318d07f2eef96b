"""Volume handles kept between commands, so that reading a volume costs one round trip, not two.

A libvirt volume handle names its volume by pool name and volume name: libvirtd looks the volume up
again by those names on every call made with it (storage driver, `virStorageVolDefFromVol`). A kept
handle therefore behaves exactly like a fresh `storageVolLookupByName` — a volume deleted since
answers "no storage vol", one deleted and made again is the new one — and saves the look-up. Each
thread's connection keeps its own (worker.virt.gateway); the cache is bounded (least recently used
go first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import libvirt

MAX_HANDLES = 4096


class VolumeHandles:
    def __init__(self, limit: int = MAX_HANDLES):
        self._limit = limit
        self._handles: OrderedDict[tuple[str, str], libvirt.virStorageVol] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, pool: str, name: str) -> libvirt.virStorageVol | None:
        with self._lock:
            handle = self._handles.get((pool, name))
            if handle is not None:
                self._handles.move_to_end((pool, name))
            return handle

    def put(self, pool: str, name: str, handle: libvirt.virStorageVol) -> None:
        with self._lock:
            self._handles[(pool, name)] = handle
            self._handles.move_to_end((pool, name))
            while len(self._handles) > self._limit:
                self._handles.popitem(last=False)

    def forget(self, pool: str, name: str | None = None) -> None:
        """One volume's handle, or with `name` None every handle of the pool."""
        with self._lock:
            if name is not None:
                self._handles.pop((pool, name), None)
                return
            for key in [k for k in self._handles if k[0] == pool]:
                del self._handles[key]

    def clear(self) -> None:
        with self._lock:
            self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)
