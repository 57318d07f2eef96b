"""Every exchange and queue name, derived in one place from the prefix and the host id.

    control plane --(routing key = host)--> <prefix>.commands (direct)
                                                |
                                                v
                          <prefix>.commands.<host> (quorum queue) --dead letters--> <prefix>.dlx (topic)
                                                |                                        |
                                              worker                               <prefix>.dead
                                          /            \\
             <prefix>.results (topic)                   <prefix>.events (topic)
             key <host>.<op>.<status>                   key <host>.<event suffix>
             + reply_to queue of the command                    |  bound with #
                                                        <prefix>.events.stream (stream queue:
                                                        every host's events, kept for replay)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    prefix: str
    host: str

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def command_queue(self) -> str:
        return f"{self.prefix}.commands.{self.host}"

    @property
    def results_exchange(self) -> str:
        return f"{self.prefix}.results"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def event_stream(self) -> str:
        """The stream queue that keeps every host's events for replay (one per prefix)."""
        return f"{self.prefix}.events.stream"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def command_routing_key(self) -> str:
        return self.host
