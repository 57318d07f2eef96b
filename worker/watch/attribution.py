"""Which command caused a pool event. libvirt's callbacks arrive on their own thread, a moment after
the call that caused them, sometimes after that command ended and the next one on the same pool
began. So each pool keeps its recent commands, and an event goes to the latest one whose operation
can cause that kind of event (its `causes` in the operation table), running or ended at most
LINGER seconds ago.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from messages.events import EventType

LINGER = 5.0
KEPT = 8


@dataclass
class _Run:
    command_id: str
    causes: frozenset[EventType]
    ended: float | None = None


class Attribution:
    def __init__(self, clock: Callable[[], float] = time.monotonic, linger: float = LINGER):
        self._clock = clock
        self._linger = linger
        self._lock = threading.Lock()
        self._runs: dict[str, deque[_Run]] = {}

    def begin(self, pool: str, command_id: str, causes: frozenset[EventType]) -> None:
        with self._lock:
            self._runs.setdefault(pool, deque(maxlen=KEPT)).append(_Run(command_id, causes))

    def end(self, pool: str, command_id: str) -> None:
        with self._lock:
            for run in self._runs.get(pool, ()):
                if run.command_id == command_id and run.ended is None:
                    run.ended = self._clock()

    def command_for(self, pool: str, kind: EventType) -> str | None:
        now = self._clock()
        with self._lock:
            for run in reversed(self._runs.get(pool, ())):
                if kind in run.causes and (run.ended is None or now - run.ended <= self._linger):
                    return run.command_id
        return None
