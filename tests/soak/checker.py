"""The invariants a soak must end with, each a function that returns its violations (sentences that
name what was wrong, with the values):

- every command got a terminal result, one distinct original per id (identical copies counted), and
  what it got is what its kind of message calls for (never an internal error);
- libvirt holds what the model of the succeeded commands allows: volumes and capacities, pool
  states, attached disks — nothing more, nothing twice;
- no temporary or partial file lies in a pool's directory (every file there is a volume);
- the journals hold no command in flight and no unpublished result after the final drain;
- every gap in an event source's sequence is accounted for (events the worker reported dropped, or
  still parked in a journal's outbox);
- every dead letter carries its reason, and only bad input and commands that ran out of deliveries
  end there.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from messages.events import CloudEvent
from messages.operations import OPERATIONS
from tests.soak.driver import Driver
from tests.soak.model import ABSENT, Model

JOURNAL_FILE = "journal.sqlite3"
REASON_HEADER = "x-storage-worker-reason"
HIDDEN = {"lost+found"}


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)      # (op, status) of each command's original result
    codes: Counter = field(default_factory=Counter)         # (status, error code) of those not succeeded
    redundant: int = 0                                      # identical originals seen again
    reads_again: int = 0                                    # reads answered afresh by a second run
    duplicates: int = 0                                     # replies marked duplicate
    gaps: int = 0                                           # missing event sequence numbers
    gaps_accounted: Counter = field(default_factory=Counter)
    dead_letters: int = 0
    events: int = 0

    def add(self, check: str, problems: list[str]) -> None:
        self.violations += [f"{check}: {p}" for p in problems]


# ------------------------------------------------------------------------------------ results

def check_results(driver: Driver, findings: Findings) -> list[str]:
    problems = []
    inbox = driver.bus.inbox
    for command_id, sent in driver.sent.items():
        command = sent.command
        originals = [r for r in inbox.results.get(command_id, []) if not r.get("duplicate")]
        findings.duplicates += sum(1 for r in inbox.replies.get(command_id, []) if r.get("duplicate"))
        label = command.op or "undecodable"
        if not originals:
            problems.append(f"{label} {command_id} ({command.lane}) got no result")
            findings.statuses[(label, "none")] += 1
            continue
        distinct = {json.dumps(r, sort_keys=True) for r in originals}
        findings.redundant += len(originals) - len(distinct)
        if len(distinct) > 1 and command.op in OPERATIONS and OPERATIONS[command.op].read_only:
            # A read's result is not kept before it is published (README "Exactly once, and where it
            # stops"): one that comes back from the broker runs again, a fresh answer, no side effect.
            findings.reads_again += 1
        elif len(distinct) > 1:
            problems.append(f"{label} {command_id} ({command.lane}, args {command.args}) got {len(distinct)} "
                            f"different results: {'; '.join(_summary(json.loads(r)) for r in sorted(distinct))}")
        result = originals[0]
        status, code = result["status"], (result.get("error") or {}).get("code")
        findings.statuses[(label, status)] += 1
        if status != "succeeded":
            findings.codes[(status, code)] += 1
        problem = _judge(command.expect, status, code, result)
        if problem:
            problems.append(f"{label} {command_id} ({command.lane}, args {command.args}): {problem}")
    return problems


def _summary(result: dict) -> str:
    error = result.get("error") or {}
    return (f"{result['status']}/{error.get('code')} attempts={result.get('attempts')} "
            f"received={result.get('received_at')} finished={result.get('finished_at')} "
            f"{(error.get('message') or '')[:100]}")


def _judge(expect: str, status: str, code: str | None, result: dict) -> str | None:
    message = (result.get("error") or {}).get("message")
    if code == "internal":
        return f"internal error: {message}"
    if expect == "undecodable":
        return None if (status, code) == ("rejected", "invalid") else f"expected rejected/invalid, got {status}/{code}"
    if expect == "rejected":
        return None if status in ("rejected", "failed") else f"expected a refusal, got {status}"
    if expect.startswith("fail:"):
        wanted = expect.split(":", 1)[1]
        if status == "succeeded" or (code != wanted and code not in ("unavailable", "timeout")):
            return f"expected failed/{wanted}, got {status}/{code}: {message}"
    return None


# ----------------------------------------------------------------------------- libvirt state

def check_libvirt(model: Model, prefix: str, findings: Findings) -> list[str]:
    problems = []
    conn = libvirt.open("qemu:///system")
    try:
        pools = {p.name(): p for p in conn.listAllStoragePools(0) if p.name().startswith(prefix)}
        seen: set[tuple] = set()
        for key in model.keys("pool"):
            _kind, _host, name = key
            pool = pools.get(name)
            actual = ABSENT if pool is None else ("running" if pool.isActive() else "inactive")
            if actual not in model.possible(key):
                problems.append(f"pool {name} is {actual}, the model allows {sorted(map(str, model.possible(key)))}")
        volume_keys = {(k[2], k[3]): k for k in model.keys("vol")}
        for name, pool in pools.items():
            if not pool.isActive():
                continue
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                if volume.name() in HIDDEN:
                    continue
                seen.add((name, volume.name()))
                key = volume_keys.get((name, volume.name()))
                capacity = volume.info()[1]
                if key is None:
                    problems.append(f"volume {name}/{volume.name()} ({capacity} bytes) exists; no command made it")
                elif capacity not in model.possible(key):
                    problems.append(f"volume {name}/{volume.name()} has capacity {capacity}, the model allows "
                                    f"{sorted(map(str, model.possible(key)))}")
        for (pool_name, volume), key in volume_keys.items():
            pool = pools.get(pool_name)
            if pool is None or not pool.isActive() or (pool_name, volume) in seen:
                continue
            if ABSENT not in model.possible(key):
                problems.append(f"volume {pool_name}/{volume} is missing, the model expects "
                                f"{sorted(map(str, model.possible(key)))}")
        problems += _check_disks(conn, model)
    finally:
        conn.close()
    return problems


def _check_disks(conn: libvirt.virConnect, model: Model) -> list[str]:
    problems = []
    for key in model.keys("disk"):
        _kind, _host, domain, target = key
        xml = etree.fromstring(conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        sources = [d.find("source") for d in xml.iterfind("devices/disk") if d.find("target") is not None
                   and d.find("target").get("dev") == target]
        actual = ABSENT
        if sources:
            source = sources[0]
            actual = source.get("volume") or Path(source.get("file") or "").name
        if actual not in model.possible(key):
            problems.append(f"domain {domain} disk {target} holds {actual!r}, the model allows "
                            f"{sorted(map(str, model.possible(key)))}")
    return problems


def check_pool_files(prefix: str) -> list[str]:
    """Every file in an active soak pool's directory is one of its volumes."""
    problems = []
    conn = libvirt.open("qemu:///system")
    try:
        for pool in conn.listAllStoragePools(0):
            if not pool.name().startswith(prefix) or not pool.isActive():
                continue
            pool.refresh(0)
            target = etree.fromstring(pool.XMLDesc(0)).findtext("target/path")
            volumes = {v.name() for v in pool.listAllVolumes(0)}
            for entry in sorted(os.listdir(target)):
                if entry not in volumes and entry not in HIDDEN:
                    problems.append(f"{target}/{entry} is no volume of pool {pool.name()} (a leftover)")
            for entry in sorted(volumes - HIDDEN):
                if entry.startswith(".") or entry.endswith((".part", ".partial", ".tmp")):
                    problems.append(f"{target}/{entry} looks like a temporary file")
    finally:
        conn.close()
    return problems


# --------------------------------------------------------------------------------- journals

def check_journals(state_dirs: list[Path], answered: set[str]) -> list[str]:
    problems = []
    for state_dir in state_dirs:
        db = sqlite3.connect(f"file:{state_dir / JOURNAL_FILE}?mode=ro", uri=True)
        try:
            for command_id, op, state in db.execute("SELECT id, op, state FROM commands WHERE state != 'finished'"):
                problems.append(f"{state_dir}: command {command_id} ({op}) is still {state}")
            for command_id, op in db.execute("SELECT id, op FROM commands WHERE state = 'finished' AND published = 0"):
                if command_id not in answered:
                    problems.append(f"{state_dir}: result of {command_id} ({op}) was never published")
        finally:
            db.close()
    return problems


def parked_events(state_dirs: list[Path]) -> set[tuple[str, str]]:
    """(source, id) of the events still waiting in the journals' outboxes."""
    parked = set()
    for state_dir in state_dirs:
        db = sqlite3.connect(f"file:{state_dir / JOURNAL_FILE}?mode=ro", uri=True)
        try:
            for (body,) in db.execute("SELECT body FROM outbox"):
                event = json.loads(body)
                parked.add((event["source"], event["id"]))
        finally:
            db.close()
    return parked


# ----------------------------------------------------------------------------------- events

def stream_of(event: CloudEvent) -> str:
    """What one sequence counter numbers: a worker process (its incarnation) of a source."""
    incarnation = getattr(event, "incarnation", None)
    return f"{event.source}#{incarnation}" if incarnation else event.source


def check_events(stream: list[tuple[str, dict]], live: list[dict], hosts: list[str], reported_drops: int,
                 parked: set[tuple[str, str]], node_restarts: int, findings: Findings) -> list[str]:
    """Sequence gaps per worker process of the soak's hosts, in the event stream read from its first
    offset (each process counts from 1, so every number from 1 to the highest seen should be
    there). A number missing from the stream is accounted for when the event came on the live path
    (the events exchange, which the soak copies into a quorum queue of its own) and a broker node
    was restarted (a stream can lose confirmed messages when its leader fails over), when the
    workers reported events dropped (their logs), or when it is still parked in a journal's outbox.
    And no command's volume event twice."""
    problems = []
    sources = {f"/storage-worker/{host}" for host in hosts}
    in_stream = _numbers(stream_body for _key, stream_body in stream)
    seen_live = _numbers(live)
    findings.events = sum(len(numbers) for numbers in in_stream.values())
    missing_union, stream_only = {}, 0
    for key in set(in_stream) | set(seen_live):
        if key.split("#")[0] not in sources:
            continue
        both = in_stream.get(key, set()) | seen_live.get(key, set())
        gone = sorted(set(range(1, max(both) + 1)) - both)
        if gone:
            missing_union[key] = gone
        stream_only += len(set(range(1, max(both) + 1)) - in_stream.get(key, set())) - len(gone)
    total = sum(len(gone) for gone in missing_union.values()) + stream_only
    findings.gaps = total
    if stream_only:
        findings.gaps_accounted["seen live, lost by the stream"] = stream_only
        if not node_restarts:
            problems.append(f"{stream_only} event(s) came on the live path but are missing from the stream, "
                            f"and no broker node was restarted")
    lost = total - stream_only
    still_parked = sum(1 for key in parked if key[0] in sources)
    findings.gaps_accounted["dropped (reported)"] = min(lost, reported_drops)
    findings.gaps_accounted["parked in outbox"] = min(lost - findings.gaps_accounted["dropped (reported)"],
                                                      still_parked)
    unexplained = lost - findings.gaps_accounted["dropped (reported)"] - findings.gaps_accounted["parked in outbox"]
    if unexplained > 0:
        problems.append(f"{unexplained} event(s) missing from the stream and the live path with no drop "
                        f"reported and none parked: {_ranges(missing_union)}")
    by_command: dict[tuple[str, str], set[str]] = defaultdict(set)
    for body in [b for _k, b in stream] + live:
        if (body.get("source") in sources and body.get("commandid") and body["type"].startswith("storage.volume.")
                and (body.get("data") or {}).get("origin") == "command"):
            by_command[(body["commandid"], body["type"])].add(body["id"])
    for (command_id, event_type), ids in sorted(by_command.items()):
        if len(ids) > 1:
            problems.append(f"command {command_id} caused {len(ids)} different {event_type} events (ran twice?)")
    return problems


def _numbers(bodies) -> dict[str, set[int]]:
    """Sequence numbers seen, per worker process (source and incarnation), each event once."""
    numbers: dict[str, set[int]] = defaultdict(set)
    for body in bodies:
        event = CloudEvent.model_validate(body)
        numbers[stream_of(event)].add(int(event.sequence))
    return numbers


def _ranges(missing: dict[str, list[int]]) -> str:
    parts = []
    for stream, numbers in missing.items():
        runs, start, last = [], numbers[0], numbers[0]
        for number in numbers[1:] + [None]:
            if number is not None and number == last + 1:
                last = number
                continue
            runs.append(f"{start}" if start == last else f"{start}-{last}")
            if number is not None:
                start = last = number
        parts.append(f"{stream}: #{', #'.join(runs[:10])}{' …' if len(runs) > 10 else ''}")
    return "; ".join(parts)


def reported_drops(logs: list[Path]) -> int:
    """Events the workers said they dropped or published without a copy in the outbox."""
    dropped = 0
    for log in logs:
        if not log.exists():
            continue
        last_total = 0
        for line in log.read_text(errors="replace").splitlines():
            if "dropping the oldest events" in line:
                try:
                    last_total = max(last_total, int(json.loads(line).get("dropped_total", 0)))
                except ValueError:
                    continue
            elif "published without its outbox copy" in line:
                dropped += 1
        dropped += last_total
    return dropped


# ------------------------------------------------------------------------------ dead letters

def check_dead_letters(messages: list[tuple[dict, bytes]], driver: Driver, findings: Findings) -> list[str]:
    problems = []
    findings.dead_letters = len(messages)
    for headers, body in messages:
        reason = headers.get(REASON_HEADER)
        deaths = headers.get("x-death") or []
        if not reason and not any(d.get("reason") for d in deaths):
            problems.append(f"dead letter without a reason: {body[:80]!r}")
            continue
        command_id = None
        try:
            command_id = json.loads(body).get("id")
        except (ValueError, AttributeError):
            pass
        sent = driver.sent.get(command_id) if command_id else None
        if sent is None and not any(c.command.expect == "undecodable" and c.command.body == body for c in driver.sent.values()):
            problems.append(f"dead letter of no command the soak sent: {body[:80]!r} ({reason})")
    expected = sum(1 for s in driver.sent.values() if s.command.expect == "undecodable")
    if findings.dead_letters < expected:
        problems.append(f"{expected} undecodable messages sent, {findings.dead_letters} dead letters")
    return problems
