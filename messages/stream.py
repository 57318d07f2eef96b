"""Reading the event stream (docs/contract.md "Replaying events"): where a reader starts, which
events it keeps, and how it sees gaps. Pure logic; `messages.client` does the AMQP part.

The stream `<prefix>.events.stream` holds every host's events in the order the broker received
them. A reader attaches with the consumer argument `x-stream-offset` and then reads on, live, on the
same consumer: history and live events come through one door, so there is no seam where an event
could be lost or seen twice. RabbitMQ 3.10 has no server-side filter for streams: the pattern and
the start time are applied here.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from messages.events import CloudEvent

OFFSET_HEADER = "x-stream-offset"
START_NAMES = ("first", "last", "next")
# A reader asked for events since T attaches at T minus this margin, then drops what is older than T
# by the events' own time: the broker stamps chunks with its clock (to the second, as AMQP timestamps
# go) and a worker's clock may run ahead of it.
CLOCK_MARGIN = timedelta(seconds=60)
REMEMBERED_IDS = 10_000  # (source, id) pairs kept to drop repeats; repeats are close to their original

Start = Literal["first", "last", "next"] | int

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `2h`, `7d`, `90s`, `1w` before `now`, or an ISO 8601 time (`2026-12-01T10:00Z`; without
    a zone it is UTC), as an aware UTC datetime. ValueError naming the text when it is neither, or
    when it lies in the future."""
    now = now or datetime.now(timezone.utc)
    match = _DURATION.match(text)
    if match is not None:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"since {text!r} is neither a duration (10m, 2h, 7d) nor an ISO 8601 time "
                         f"(2026-12-01T10:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    if moment > now:
        raise ValueError(f"since {text!r} is in the future (now is {now.isoformat(timespec='seconds')})")
    return moment


def parse_start(text: str) -> Start:
    """`first`, `last`, `next` or an offset (a whole number of at least 0)."""
    word = text.strip().lower()
    if word in START_NAMES:
        return word  # type: ignore[return-value]
    if word.isdigit():
        return int(word)
    raise ValueError(f"start {text!r} is not first, last, next or an offset (a whole number of at least 0)")


def since_time(since: datetime | timedelta | str, now: datetime | None = None) -> datetime:
    """A `since` argument as an aware UTC datetime: a timedelta counts back from now."""
    now = now or datetime.now(timezone.utc)
    if isinstance(since, str):
        return parse_since(since, now)
    if isinstance(since, timedelta):
        return now - since
    return since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since.astimezone(timezone.utc)


def consumer_arguments(since: datetime | None, start: Start | None) -> dict[str, Any]:
    """basic.consume arguments for a stream reader that starts at `since` or at `start`."""
    if since is not None and start is not None:
        raise ValueError("give a start time (since) or a start position (offset), not both")
    if since is not None:
        return {OFFSET_HEADER: since - CLOCK_MARGIN}  # pika sends a datetime as an AMQP timestamp
    if start is None:
        raise ValueError("a stream reader needs a start time (since) or a start position (offset)")
    if isinstance(start, bool) or not (start in START_NAMES or (isinstance(start, int) and start >= 0)):
        raise ValueError(f"offset {start!r} is not first, last, next or a whole number of at least 0")
    return {OFFSET_HEADER: start}


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on '.', `*` is exactly one word, `#` zero or more."""
    words, parts = key.split("."), pattern.split(".")
    # reachable[j]: the first i pattern parts can match the first j words.
    reachable = [True] + [False] * len(words)
    for part in parts:
        if part == "#":
            for j in range(1, len(words) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [reachable[j - 1] and (part == "*" or part == words[j - 1])
                                   for j in range(1, len(words) + 1)]
    return reachable[len(words)]


@dataclass(frozen=True)
class Gap:
    """Events of `source` with sequence numbers `first`..`last` were not seen."""

    source: str
    host: str
    first: int
    last: int

    def __str__(self) -> str:
        count = self.last - self.first + 1
        span = f"#{self.first}" if count == 1 else f"#{self.first}-#{self.last}"
        return f"{self.host}: {count} event(s) missing ({span})"


@dataclass
class _Source:
    last: int
    missing: list[tuple[int, int]] = field(default_factory=list)  # ranges not seen yet, oldest first


class SequenceCheck:
    """Gaps in each source's `sequence`. The sequence counts up in publish order within one worker
    process and starts again at 1 in the next; an event that fills an earlier gap late (a publish the
    broker nacked and the worker sent again) closes it. The first event of each source sets its
    start: what came before the reader's window is no gap. Feed it each event once (repeats
    dropped first, as StreamFilter does): a repeat would read as a new process.

    Events that name their `incarnation` (the worker process that numbered them) are counted per
    incarnation: a host with a hot standby has two processes publishing under one source at once,
    whose sequences interleave."""

    MAX_OPEN_GAPS = 100

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}

    def observe(self, event: CloudEvent) -> Gap | None:
        sequence = int(event.sequence)
        counter = f"{event.source}#{event.incarnation}" if event.incarnation else event.source
        state = self._sources.get(counter)
        if state is None:
            self._sources[counter] = _Source(last=sequence)
            return None
        if sequence == state.last + 1:
            state.last = sequence
            return None
        if sequence > state.last:
            gap = Gap(event.source, event.host, state.last + 1, sequence - 1)
            state.missing = [*state.missing, (gap.first, gap.last)][-self.MAX_OPEN_GAPS:]
            state.last = sequence
            return gap
        if self._fills(state, sequence):
            return None
        # Lower than anything open: a new process of that worker, counting from 1 again.
        self._sources[counter] = _Source(last=sequence)
        return Gap(event.source, event.host, 1, sequence - 1) if sequence > 1 else None

    @staticmethod
    def _fills(state: _Source, sequence: int) -> bool:
        for index, (low, high) in enumerate(state.missing):
            if low <= sequence <= high:
                rest = [(low, sequence - 1)] if sequence > low else []
                rest += [(sequence + 1, high)] if sequence < high else []
                state.missing[index:index + 1] = rest
                return True
        return False


class StreamFilter:
    """What a stream reader keeps, and the gaps it sees: events published at or after `since` (by
    the event's own time), each (source, id) once, checked for gaps, and then only those whose
    routing key matches `pattern` — gaps are looked for among all events, since the pattern would
    make holes of its own."""

    def __init__(self, pattern: str = "#", since: datetime | None = None, remembered: int = REMEMBERED_IDS):
        self.pattern = pattern
        self.since = since
        self._remembered = remembered
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._sequences = SequenceCheck()

    def take(self, routing_key: str, event: CloudEvent) -> tuple[bool, Gap | None]:
        """(whether to hand the event on, the gap it reveals if any)."""
        if self.since is not None and event.time < self.since:
            return False, None
        key = (event.source, event.id)
        if key in self._seen:
            return False, None
        self._seen[key] = None
        if len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        return topic_matches(self.pattern, routing_key), self._sequences.observe(event)
