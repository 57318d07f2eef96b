"""Which acknowledgements to send for one consume channel, coalesced where delivery order allows.

The broker handles every basic.ack frame as a unit of work (for a quorum queue, an entry in its log);
one ack with multiple=True settles every delivery up to its tag. Acks asked for during one turn of the
I/O loop are sent together at its end: the longest run of settled deliveries at the front of the
channel as one multiple ack, any others one by one, so a delivery still held (a command still
running) never delays the ack of those behind it. Measured with the bare-pika replier of
`scripts/bench`: acking 8 deliveries per frame cut the broker's CPU per message by about a quarter.
"""

from __future__ import annotations


class AckBatcher:
    def __init__(self) -> None:
        self._open: list[int] = []  # delivery tags not yet acked or nacked, in delivery order
        self._acked: set[int] = set()  # acks asked for, not yet sent

    def delivered(self, tag: int) -> None:
        self._open.append(tag)

    def ack(self, tag: int) -> None:
        self._acked.add(tag)

    def nacked(self, tag: int) -> None:
        """A delivery given back with its own nack: it is no longer open."""
        if tag in self._open:
            self._open.remove(tag)
        self._acked.discard(tag)

    @property
    def pending(self) -> bool:
        return bool(self._acked)

    def flush(self) -> list[tuple[int, bool]]:
        """The (delivery_tag, multiple) acks to send now, in order."""
        frames: list[tuple[int, bool]] = []
        front = 0
        while front < len(self._open) and self._open[front] in self._acked:
            front += 1
        if front:
            frames.append((self._open[front - 1], front > 1))
            for tag in self._open[:front]:
                self._acked.discard(tag)
            del self._open[:front]
        for tag in sorted(self._acked):
            if tag in self._open:
                frames.append((tag, False))
                self._open.remove(tag)
        self._acked.clear()
        return frames
