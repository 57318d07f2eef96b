"""How long the broker has said nothing on the current connection.

A cut link (a dead switch port, a partition) drops packets without a reset: the socket stays open
and pika notices only when its heartbeat check runs, up to twice (heartbeat + 5 s) later. The
broker, though, sends a frame at least every heartbeat / 2 seconds, so a connection that has
received nothing for a whole heartbeat timeout has missed two of them: by the broker's own rule
the peer is unreachable. /readyz uses this to say "not ready" within about one heartbeat of a cut.

Sampled on demand from pika's received-bytes counter (a plain integer the I/O thread increments;
reading it changes nothing), so the answer is a lower bound: silence began no later than the first
sample that saw the counter at its current value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Silence:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: tuple[int, int] | None = None  # (id of the connection, bytes received)
        self._since = 0.0
        self._lock = threading.Lock()  # probes come from the HTTP server's threads

    def seconds(self, connection: object | None) -> float:
        """Seconds since `connection` was last seen receiving; 0 with no connection or a new one."""
        with self._lock:
            now = self._clock()
            if connection is None:
                self._seen = None
                return 0.0
            sample = (id(connection), getattr(connection, "bytes_received", 0))
            if sample != self._seen:
                self._seen, self._since = sample, now
            return now - self._since
