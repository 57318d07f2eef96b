"""Journal writes that wait for the journal's next transaction, kept in memory until then.

What the broker confirmed: results whose `published` flag is to be set, and parked events to delete
(confirms arrive on the AMQP I/O thread, which should not wait for the disk). And the results of
reads (see Journal.finish_later), by command id. Reading through these, they count as written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# Deferred read results that make the next caller write them at once: this many, or this many
# bytes of results (a volume.list of a large pool is megabytes).
FINISHED_LATER_AT = 64
FINISHED_LATER_BYTES = 4 * 2**20


@dataclass
class Batch:
    """What one transaction writes: confirmed result flags, confirmed events, results of reads
    (command id -> the finish statement's parameters, the result as JSON at index 3)."""

    confirmed: set[str] = field(default_factory=set)
    unparked: set[int] = field(default_factory=set)
    finished_later: dict[str, tuple] = field(default_factory=dict)


class DeferredWrites:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = Batch()
        self._finished_later_bytes = 0

    def confirmed(self, command_id: str) -> None:
        with self._lock:
            self._waiting.confirmed.add(command_id)

    def unparked(self, seqs: list[int]) -> None:
        with self._lock:
            self._waiting.unparked.update(seqs)

    def finish_later(self, command_id: str, parameters: tuple) -> bool:
        """Keep a read's result; True when enough wait that they should be written now."""
        with self._lock:
            self._waiting.finished_later[command_id] = parameters
            self._finished_later_bytes += len(parameters[3])
            return (len(self._waiting.finished_later) >= FINISHED_LATER_AT
                    or self._finished_later_bytes >= FINISHED_LATER_BYTES)

    def read(self, command_id: str) -> tuple[tuple | None, bool]:
        """(the read's result parameters waiting here or None, whether its result was confirmed)."""
        with self._lock:
            return self._waiting.finished_later.get(command_id), command_id in self._waiting.confirmed

    def holds_result(self, command_id: str) -> bool:
        with self._lock:
            return command_id in self._waiting.finished_later

    def results_waiting(self) -> int:
        with self._lock:
            return len(self._waiting.finished_later)

    def events_confirmed(self) -> set[int]:
        with self._lock:
            return set(self._waiting.unparked)

    def take(self, results: bool) -> Batch:
        """What to write now. Without the results of reads, their confirmed flags stay behind too:
        the rows they would set are not written yet."""
        with self._lock:
            waiting = self._waiting
            if results:
                self._waiting, self._finished_later_bytes = Batch(), 0
                return waiting
            confirmed = {i for i in waiting.confirmed if i not in waiting.finished_later}
            waiting.confirmed -= confirmed
            unparked, waiting.unparked = waiting.unparked, set()
        return Batch(confirmed=confirmed, unparked=unparked)

    def put_back(self, batch: Batch) -> None:
        """A transaction that failed: its writes wait for the next one."""
        with self._lock:
            self._waiting.confirmed |= batch.confirmed
            self._waiting.unparked |= batch.unparked
            self._waiting.finished_later = {**batch.finished_later, **self._waiting.finished_later}
            self._finished_later_bytes += sum(len(row[3]) for row in batch.finished_later.values())
