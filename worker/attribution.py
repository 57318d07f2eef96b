"""Which command caused a pool event. libvirt's callbacks arrive on their own thread, a moment after
the call that caused them returned, so a pool command's id stays attached to its pool for a short
while after it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LINGER = 5.0


class Attribution:
    def __init__(self, clock: Callable[[], float] = time.monotonic, linger: float = LINGER):
        self._clock = clock
        self._linger = linger
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}
        self._ended: dict[str, tuple[str, float]] = {}

    def begin(self, pool: str, command_id: str) -> None:
        with self._lock:
            self._running[pool] = command_id

    def end(self, pool: str, command_id: str) -> None:
        with self._lock:
            if self._running.get(pool) == command_id:
                del self._running[pool]
            self._ended[pool] = (command_id, self._clock())

    def command_for(self, pool: str) -> str | None:
        with self._lock:
            if pool in self._running:
                return self._running[pool]
            ended = self._ended.get(pool)
            if ended is not None and self._clock() - ended[1] <= self._linger:
                return ended[0]
            self._ended.pop(pool, None)
            return None
