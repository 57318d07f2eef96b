"""Progress of long jobs (storage.job.progress, docs/contract.md "Events"): at most about one event a second.

Transfers report their own byte counts. Operations libvirt runs to the end without telling anyone
(clone, wipe) are watched from the side: a probe is sampled once a second on a helper thread while
the blocking libvirt call runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from messages.events import EventType, JobProgressData
from worker.virt.streams import TransferCancelled
from worker.transport.events import EventPublisher

log = logging.getLogger(__name__)

INTERVAL = 1.0


class ProgressReporter:
    def __init__(self, events: EventPublisher, command_id: str, op: str, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self._events = events
        self._command_id = command_id
        self._op = op
        self._interval = interval
        self._clock = clock
        self._last_time = clock()  # the job's start: the first event comes an interval after it
        self._last_bytes = 0
        self._lock = threading.Lock()

    def update(self, bytes_done: int, bytes_total: int, *, final: bool = False) -> None:
        """Publish an event when an interval has passed since the last one (always when `final`)."""
        with self._lock:
            now = self._clock()
            elapsed = now - self._last_time
            if not final and elapsed < self._interval:
                return
            rate = (bytes_done - self._last_bytes) / elapsed if elapsed > 0 else 0.0
            self._last_time, self._last_bytes = now, bytes_done
        self._events.emit(EventType.job_progress,
                          JobProgressData(id=self._command_id, op=self._op, bytes_done=bytes_done,
                                          bytes_total=bytes_total, rate=max(rate, 0.0)),
                          subject=f"jobs/{self._command_id}", command_id=self._command_id)


@contextmanager
def watched(reporter: ProgressReporter, probe: Callable[[], tuple[int, int] | None],
            interval: float = INTERVAL) -> Iterator[None]:
    """Sample `probe` -> (bytes_done, bytes_total) every interval while the block runs."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            try:
                reading = probe()
            except Exception:  # a failed sample must never disturb the operation it watches
                log.debug("progress probe failed", exc_info=True)
                reading = None
            if reading is not None:
                reporter.update(*reading)

    thread = threading.Thread(target=sample, name="progress-probe", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def ticker(cancel: threading.Event, progress: ProgressReporter, total: int) -> Callable[[int], None]:
    """After every chunk: stop if job.cancel asked for it, and report progress (rate-limited)."""

    def tick(position: int) -> None:
        if cancel.is_set():
            raise TransferCancelled()
        progress.update(position, total)

    return tick
