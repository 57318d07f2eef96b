"""The commands this process holds, by id: shared by intake, custody, cancellation, settlement and
the executor threads.

A command is in the table from the moment it is accepted (or resumed from the journal, or its
stored result is published again) until its result is confirmed by the broker. Deliveries that
repeat its id while it is there wait in `repeats` for that one result.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from messages.command import Command
from worker.transport.port import Delivery


@dataclass
class InFlight:
    """A command this process is executing, and every delivery that waits for its result."""

    command: Command
    received_at: datetime
    reply_to: str | None
    correlation_id: str | None
    delivery: Delivery | None = None  # None once acked (journal custody) or when resumed from the journal
    held_since: float = field(default_factory=time.monotonic)
    repeats: list[Delivery] = field(default_factory=list)
    #: a redelivered read: a peer that lost its connection may have answered it (CommandService)
    peer_may_answer: bool = False


class InFlightTable:
    def __init__(self) -> None:
        # Re-entrant: custody takes a command under it, and that hand-over must not interleave with
        # the command's settlement (both would acknowledge the delivery).
        self.lock = threading.RLock()
        self._flights: dict[str, InFlight] = {}

    def __len__(self) -> int:
        with self.lock:
            return len(self._flights)

    def __contains__(self, command_id: str) -> bool:
        with self.lock:
            return command_id in self._flights

    def add(self, flight: InFlight) -> None:
        with self.lock:
            self._flights[flight.command.id] = flight

    def get(self, command_id: str) -> InFlight | None:
        with self.lock:
            return self._flights.get(command_id)

    def pop(self, command_id: str) -> InFlight | None:
        with self.lock:
            return self._flights.pop(command_id, None)

    def join(self, command_id: str, fingerprint: str, delivery: Delivery) -> bool:
        """A repeat of a command held here waits for its result; False when the id is not held
        (or is held for other arguments)."""
        with self.lock:
            flight = self._flights.get(command_id)
            if flight is not None and flight.command.fingerprint == fingerprint:
                flight.repeats.append(delivery)
                return True
        return False

    def overdue(self, now: float, own_after: float) -> list[InFlight]:
        """Commands still holding their delivery after `own_after` seconds."""
        with self.lock:
            return [f for f in self._flights.values() if f.delivery is not None and now - f.held_since >= own_after]
