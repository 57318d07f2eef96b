"""Sends the lanes' commands and hands each lane its results, in one loop that owns the broker
connection. A lane sends its next command once every command it has out got its first terminal
result and a short pause (up to THINK seconds, as a control plane between two steps); some
commands are sent a second time, identically, a moment later (a duplicate)."""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.soak.bus import Bus
from tests.soak.lanes import Command, Lane

THINK = 0.3


@dataclass
class Sent:
    command: Command
    at: float
    answered_at: float | None = None


@dataclass
class Driver:
    bus: Bus
    lanes: list[Lane]
    sent: dict[str, Sent] = field(default_factory=dict)
    resends: Counter = field(default_factory=Counter)      # "duplicate" (by the mix), "bus" (publish retried)
    _waiting: dict[str, set[str]] = field(default_factory=dict)   # lane -> ids without a result
    _resend_queue: list[tuple[float, int, str]] = field(default_factory=list)
    _ready_at: dict[str, float] = field(default_factory=dict)     # lane -> when it sends next
    _order: int = 0

    def send(self, command: Command) -> None:
        self.sent[command.id] = Sent(command, time.monotonic())
        self._waiting.setdefault(command.lane, set()).add(command.id)
        retried = self.bus.publish(command.host, command.encoded(), command.id, command.id)
        self.resends["bus"] += retried
        if command.resend_after is not None:
            self._order += 1
            heapq.heappush(self._resend_queue, (time.monotonic() + command.resend_after, self._order, command.id))

    def _resend_due(self) -> None:
        now = time.monotonic()
        while self._resend_queue and self._resend_queue[0][0] <= now:
            _due, _order, command_id = heapq.heappop(self._resend_queue)
            command = self.sent[command_id].command
            self.resends["duplicate"] += 1
            self.resends["bus"] += self.bus.publish(command.host, command.encoded(), command.id, command.id)

    def _deliver(self) -> None:
        self.bus.collect()
        lanes = {lane.name: lane for lane in self.lanes}
        for name, ids in self._waiting.items():
            if not ids:
                continue
            for command_id in list(ids):
                originals = [r for r in self.bus.inbox.results.get(command_id, []) if not r.get("duplicate")]
                if not originals:
                    continue
                ids.discard(command_id)
                entry = self.sent[command_id]
                entry.answered_at = time.monotonic()
                if entry.command.on_result is not None:
                    entry.command.on_result(originals[0])
            if not ids:
                self._ready_at[name] = time.monotonic() + lanes[name].rng.uniform(0, THINK)

    def step(self, sending: bool) -> None:
        self._deliver()
        self._resend_due()
        if not sending:
            return
        now = time.monotonic()
        for lane in self.lanes:
            if not self._waiting.get(lane.name) and self._ready_at.get(lane.name, 0.0) <= now:
                for command in lane.next():
                    self.send(command)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step(sending=True)
            time.sleep(0.05)

    def outstanding(self) -> int:
        return sum(len(ids) for ids in self._waiting.values()) + len(self._resend_queue)

    def drain(self, timeout: float) -> None:
        """Send nothing new; wait until every command has its result (or the time is up)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.outstanding():
            self.step(sending=False)
            time.sleep(0.2)
