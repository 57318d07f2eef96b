"""The soak's pure parts: the fault schedule follows the seed, the model allows what results say, and
the checker's verdicts on results and event sequences (tests/soak)."""

from __future__ import annotations

from collections import Counter

from tests.soak.checker import Findings, _judge, check_events
from tests.soak.faults import KINDS, schedule
from tests.soak.model import ABSENT, Model


def test_the_schedule_follows_the_seed_and_has_every_kind():
    assert schedule(7, 180) == schedule(7, 180)
    assert schedule(7, 180) != schedule(8, 180)
    plan = schedule(1, 180)
    assert set(KINDS) <= {p.kind for p in plan}
    assert all(0.08 * 180 <= p.at <= 0.8 * 180 for p in plan)
    assert len(schedule(2026, 1800)) == 1800 // 20


def test_the_model_keeps_what_a_result_allows():
    model = Model()
    key = ("vol", "h", "p", "v")
    assert model.possible(key) == {ABSENT}
    model.outcome(key, 5, "succeeded", None)
    assert model.possible(key) == {5}
    model.outcome(key, 6, "failed", "no_space")
    assert model.possible(key) == {5}, "a refusal changed nothing"
    model.outcome(key, 7, "failed", "unavailable")
    assert model.possible(key) == {5, 7} and not model.known(key), "libvirtd went away: either"
    assert not model.observed(key, 9), "a read saw what no result allowed"
    assert model.certain(key) == 9


def test_internal_errors_and_wrong_refusals_are_violations():
    internal = {"status": "failed", "error": {"code": "internal", "message": "boom"}}
    assert "internal error: boom" in _judge("result", "failed", "internal", internal)
    in_use = {"status": "failed", "error": {"code": "in_use", "message": "used by d"}}
    assert _judge("fail:in_use", "failed", "in_use", in_use) is None
    assert _judge("fail:in_use", "succeeded", None, {"status": "succeeded"}) is not None
    assert _judge("undecodable", "rejected", "invalid", {"status": "rejected"}) is None


def event(sequence: int, incarnation: str, commandid: str | None = None, event_id: str | None = None) -> dict:
    return {"specversion": "1.0", "id": event_id or f"{incarnation}-{sequence}", "source": "/storage-worker/h",
            "type": "storage.volume.created", "time": "2026-12-01T10:00:00.000Z", "host": "h",
            "sequence": str(sequence), "incarnation": incarnation, "commandid": commandid,
            "data": {"pool": "p", "volume": {}, "origin": "command"}}


def test_gaps_per_process_and_what_accounts_for_them():
    events = [("h.volume.created", event(n, "one")) for n in (1, 2, 4)]
    events += [("h.volume.created", event(n, "two")) for n in (1, 2, 3)]
    findings = Findings()
    problems = check_events(events, [], ["h"], 0, set(), 0, findings)
    assert findings.gaps == 1 and problems and "#3" in problems[0]
    findings = Findings()
    assert check_events(events, [], ["h"], 1, set(), 0, findings) == []
    assert findings.gaps_accounted == Counter({"dropped (reported)": 1, "parked in outbox": 0})


def test_events_the_stream_lost_but_the_live_path_carried_need_a_node_restart():
    stream = [("h.volume.created", event(n, "one")) for n in (1, 3)]
    live = [event(2, "one")]
    findings = Findings()
    assert check_events(stream, live, ["h"], 0, set(), 1, findings) == []
    assert findings.gaps_accounted["seen live, lost by the stream"] == 1
    problems = check_events(stream, live, ["h"], 0, set(), 0, Findings())
    assert problems and "no broker node was restarted" in problems[0]


def test_one_command_making_two_events_of_a_kind_ran_twice():
    events = [("h.volume.created", event(1, "one", commandid="c1")),
              ("h.volume.created", event(1, "two", commandid="c1"))]
    problems = check_events(events, [], ["h"], 0, set(), 0, Findings())
    assert problems == ["command c1 caused 2 different storage.volume.created events (ran twice?)"]
