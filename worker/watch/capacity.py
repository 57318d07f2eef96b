"""Low-capacity alarms with hysteresis: `low` when available/capacity falls under the threshold,
`ok` only once it has climbed back over threshold + margin, so a pool hovering at the threshold
does not flap."""

from __future__ import annotations

import threading
from enum import Enum

from messages.objects import PoolObject


class Level(str, Enum):
    low = "low"
    ok = "ok"


def recovery_level(threshold: float) -> float:
    """Where a low pool counts as recovered: a fifth above the threshold, at least one point."""
    return threshold + max(0.01, threshold * 0.2)


class CapacityWatch:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self._recover = recovery_level(threshold)
        self._low: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, pool: PoolObject) -> Level | None:
        """The transition this observation makes, if any (None for inactive or empty pools)."""
        if pool.state.value != "running" or pool.capacity <= 0:
            return None
        fraction = pool.available / pool.capacity
        with self._lock:
            if pool.name not in self._low and fraction < self.threshold:
                self._low.add(pool.name)
                return Level.low
            if pool.name in self._low and fraction >= self._recover:
                self._low.discard(pool.name)
                return Level.ok
        return None

    def forget(self, name: str) -> None:
        with self._lock:
            self._low.discard(name)
