"""Backing stores of volumes: read from the volume's XML, named by pool and volume where they are one.

libvirt's volume XML names only the direct backing store (`<backingStore><path/><format/>`), by
path. A path is turned into a pool and volume name with `storageVolLookupByPath`; a path that is no
pool's volume (a file someone put elsewhere) is reported by its path alone. The chain to the root
is followed one volume XML at a time, each link being a pool volume whose own XML names the next;
a link that is no pool's volume ends the chain as far as libvirt can tell.

A resolver lives for one command and looks each path up once, so a listing of many overlays of one
base image asks libvirt about the base once.
"""

from __future__ import annotations

import libvirt

from messages.objects import BackingStore
from worker.virt import volume_xml

# Links followed at most: qemu's own limit on a backing chain's depth is 16 layers of
# BlockDriverState recursion in practice; libvirt refuses chains with loops. Far beyond either.
MAX_DEPTH = 64


class BackingResolver:
    def __init__(self, conn: libvirt.virConnect):
        self._conn = conn
        # path -> (pool, name, volume XML) of the pool volume at that path, or None when it is none
        self._found: dict[str, tuple[str, str, str] | None] = {}

    def direct(self, path: str | None, fmt: str | None) -> BackingStore | None:
        """The direct backing store a volume's XML names by (path, format), or None without one."""
        return None if path is None else self._store(path, fmt)

    def chain(self, path: str | None, fmt: str | None) -> list[BackingStore]:
        """Every link of the backing chain that starts at the direct backing store (path, format),
        to the root; a link that is no pool's volume ends it."""
        links: list[BackingStore] = []
        while path is not None and len(links) < MAX_DEPTH and all(link.path != path for link in links):
            links.append(self._store(path, fmt))
            found = self._volume_at(path)
            if found is None:
                break
            path, fmt = volume_xml.backing_of(found[2])
        return links

    def _store(self, path: str, fmt: str | None) -> BackingStore:
        found = self._volume_at(path)
        pool, name = (found[0], found[1]) if found is not None else (None, None)
        return BackingStore(pool=pool, name=name, path=path, format=fmt)

    def _volume_at(self, path: str) -> tuple[str, str, str] | None:
        if path not in self._found:
            try:
                volume = self._conn.storageVolLookupByPath(path)
                self._found[path] = (volume.storagePoolLookupByVolume().name(), volume.name(), volume.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
                    raise
                self._found[path] = None
        return self._found[path]
