"""messages.stream: where a reader of the event stream starts, what it keeps, and the gaps it sees."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from messages.events import CloudEvent, EventType
from messages.stream import (CLOCK_MARGIN, OFFSET_HEADER, Gap, SequenceCheck, StreamFilter, consumer_arguments,
                             parse_since, parse_start, since_time, topic_matches)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def event(host: str = "kvm-01", sequence: int = 1, *, at: datetime = NOW, event_id: str | None = None,
          kind: EventType = EventType.pool_refreshed) -> CloudEvent:
    return CloudEvent(id=event_id or str(uuid.uuid4()), source=f"/storage-worker/{host}", type=kind, time=at,
                      host=host, sequence=str(sequence), data={})


@pytest.mark.parametrize("text, back", [("10m", timedelta(minutes=10)), ("90s", timedelta(seconds=90)),
                                        ("2h", timedelta(hours=2)), ("7d", timedelta(days=7)),
                                        ("1w", timedelta(weeks=1)), ("1.5h", timedelta(minutes=90)),
                                        (" 5 m ", timedelta(minutes=5))])
def test_since_as_a_duration(text, back):
    assert parse_since(text, NOW) == NOW - back


@pytest.mark.parametrize("text, moment", [
    ("2026-12-01T10:00Z", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
    ("2026-12-01T10:00:30+01:00", datetime(2026, 12, 1, 9, 0, 30, tzinfo=timezone.utc)),
    ("2026-12-01T10:00", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),  # no zone: UTC
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=timezone.utc)),
])
def test_since_as_a_time(text, moment):
    assert parse_since(text, NOW) == moment


@pytest.mark.parametrize("text, says", [("10x", "neither a duration"), ("yesterday", "neither a duration"),
                                        ("", "neither a duration"), ("2026-12-02T00:00Z", "in the future")])
def test_bad_since_names_the_text(text, says):
    with pytest.raises(ValueError) as raised:
        parse_since(text, NOW)
    assert says in str(raised.value) and repr(text) in str(raised.value)


def test_since_arguments_of_every_kind():
    assert since_time(timedelta(minutes=5), NOW) == NOW - timedelta(minutes=5)
    assert since_time("5m", NOW) == NOW - timedelta(minutes=5)
    assert since_time(datetime(2026, 12, 1, 11, 0), NOW) == datetime(2026, 12, 1, 11, 0, tzinfo=timezone.utc)
    local = datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=2)))
    assert since_time(local, NOW) == datetime(2026, 12, 1, 11, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, start", [("first", "first"), ("LAST", "last"), ("next", "next"), ("0", 0),
                                         ("12345", 12345)])
def test_start(text, start):
    assert parse_start(text) == start


@pytest.mark.parametrize("text", ["-1", "1.5", "beginning", ""])
def test_bad_start_names_the_text(text):
    with pytest.raises(ValueError, match="is not first, last, next or an offset"):
        parse_start(text)


def test_consumer_arguments():
    assert consumer_arguments(None, "first") == {OFFSET_HEADER: "first"}
    assert consumer_arguments(None, 42) == {OFFSET_HEADER: 42}
    # A start time attaches a margin earlier: chunks, whole seconds and clocks ahead of the broker's.
    assert consumer_arguments(NOW, None) == {OFFSET_HEADER: NOW - CLOCK_MARGIN}
    with pytest.raises(ValueError, match="not both"):
        consumer_arguments(NOW, "first")
    for bad in (-1, "start", True):
        with pytest.raises(ValueError, match="not first, last, next"):
            consumer_arguments(None, bad)


@pytest.mark.parametrize("pattern, key, matches", [
    ("#", "kvm-01.pool.started", True),
    ("kvm-01.#", "kvm-01.pool.started", True),
    ("kvm-01.#", "kvm-02.pool.started", False),
    ("*.volume.*", "kvm-01.volume.created", True),
    ("*.volume.*", "kvm-01.pool.capacity.low", False),
    ("*.pool.*", "kvm-01.pool.capacity.low", False),
    ("*.pool.#", "kvm-01.pool.capacity.low", True),
    ("#.low", "kvm-01.pool.capacity.low", True),
    ("kvm-01.#.low", "kvm-01.low", True),
    ("*.worker.#", "kvm-01.worker.libvirt.disconnected", True),
    ("*", "kvm-01.pool.started", False),
    ("kvm-01.pool.started", "kvm-01.pool.started", True),
    ("kvm-01.pool", "kvm-01.pool.started", False),
])
def test_topic_matching_follows_amqp(pattern, key, matches):
    assert topic_matches(pattern, key) is matches


def test_the_filter_keeps_events_since_the_start_each_once_and_matching():
    kept = StreamFilter("*.volume.*", since=NOW)
    early = event(sequence=1, at=NOW - timedelta(seconds=1))
    assert kept.take("kvm-01.pool.refreshed", early) == (False, None)
    volume = event(sequence=2, kind=EventType.volume_created)
    assert kept.take("kvm-01.volume.created", volume) == (True, None)
    assert kept.take("kvm-01.volume.created", volume) == (False, None), "a repeat of (source, id) is dropped"
    assert kept.take("kvm-01.pool.refreshed", event(sequence=3)) == (False, None), "not matching"
    # Gaps are looked for among every event, not only the matching ones.
    keep, gap = kept.take("kvm-01.volume.created", event(sequence=6, kind=EventType.volume_created))
    assert keep and gap == Gap("/storage-worker/kvm-01", "kvm-01", 4, 5)


def test_the_same_id_from_another_source_is_another_event():
    kept = StreamFilter()
    assert kept.take("a.pool.started", event("a", 1, event_id="x"))[0]
    assert kept.take("b.pool.started", event("b", 1, event_id="x"))[0]


def test_sequences_per_source_gaps_late_arrivals_and_restarts():
    check = SequenceCheck()
    assert check.observe(event("a", 40)) is None, "the first event of a source sets its start"
    assert check.observe(event("b", 7)) is None
    assert check.observe(event("a", 41)) is None
    gap = check.observe(event("a", 45))
    assert gap == Gap("/storage-worker/a", "a", 42, 44) and str(gap) == "a: 3 event(s) missing (#42-#44)"
    assert check.observe(event("a", 43)) is None, "a late arrival fills part of the gap"
    assert check.observe(event("a", 42)) is None and check.observe(event("a", 44)) is None
    assert check.observe(event("b", 8)) is None
    assert check.observe(event("a", 1)) is None, "a new process counts from 1 again"
    assert check.observe(event("a", 2)) is None
    assert str(check.observe(event("a", 4))) == "a: 1 event(s) missing (#3)"
    assert check.observe(event("b", 9)) is None, "each source counts on its own"


def test_a_restart_whose_first_events_were_missed_is_a_gap():
    check = SequenceCheck()
    check.observe(event("a", 10))
    assert check.observe(event("a", 3)) == Gap("/storage-worker/a", "a", 1, 2)


def test_a_standby_counts_on_its_own_under_the_same_source():
    """Two processes of one host (a hot standby) publish under one source, their sequences
    interleaved: each incarnation is checked on its own, so neither reads as gaps or restarts."""
    check = SequenceCheck()
    active = [event("a", n).model_copy(update={"incarnation": "one"}) for n in range(1, 6)]
    standby = [event("a", n).model_copy(update={"incarnation": "two"}) for n in range(1, 4)]
    for first, second in zip(active, standby):
        assert check.observe(first) is None and check.observe(second) is None
    assert check.observe(active[3]) is None
    skipped = event("a", 5).model_copy(update={"incarnation": "two"})
    assert check.observe(skipped) == Gap("/storage-worker/a", "a", 4, 4), "a gap of the standby's own"
