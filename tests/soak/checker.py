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
        if len(distinct) > 1:
            problems.append(f"{label} {command_id} got {len(distinct)} different results: "
                            f"{sorted(r['status'] for r in originals)}")
        result = originals[0]
        status, code = result["status"], (result.get("error") or {}).get("code")
        findings.statuses[(label, status)] += 1
        if status != "succeeded":
            findings.codes[(status, code)] += 1
        problem = _judge(command.expect, status, code, result)
        if problem:
            problems.append(f"{label} {command_id} ({command.lane}, args {command.args}): {problem}")
    return problems


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


def check_events(events: list[tuple[str, dict]], hosts: list[str], reported_drops: int,
                 parked: set[tuple[str, str]], findings: Findings) -> list[str]:
    """Sequence gaps per worker process of the soak's hosts (each counts from 1, and the stream is
    read from its first offset, so every number from 1 to the highest seen should be there); the
    missing ones must be accounted for by events the workers reported dropped (their logs) or
    events still parked in a journal's outbox. And no command's volume event twice."""
    problems = []
    sources = {f"/storage-worker/{host}" for host in hosts}
    seen: set[tuple[str, str]] = set()
    numbers: dict[str, set[int]] = defaultdict(set)
    by_command: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _key, body in events:
        event = CloudEvent.model_validate(body)
        if event.source not in sources or (event.source, event.id) in seen:
            continue
        seen.add((event.source, event.id))
        findings.events += 1
        numbers[stream_of(event)].add(int(event.sequence))
        if (event.commandid and event.type.value.startswith("storage.volume.")
                and event.data.get("origin") == "command"):
            by_command[(event.commandid, event.type.value)].add(event.id)
    missing = {stream: sorted(set(range(1, max(seen_numbers) + 1)) - seen_numbers)
               for stream, seen_numbers in numbers.items()}
    missing = {stream: gone for stream, gone in missing.items() if gone}
    total = sum(len(gone) for gone in missing.values())
    findings.gaps = total
    still_parked = sum(1 for key in parked if key[0] in sources)
    findings.gaps_accounted["dropped (reported)"] = min(total, reported_drops)
    findings.gaps_accounted["parked in outbox"] = min(total - findings.gaps_accounted["dropped (reported)"],
                                                      still_parked)
    unexplained = total - sum(findings.gaps_accounted.values())
    if unexplained > 0:
        problems.append(f"{unexplained} event(s) missing from the stream with no drop reported and none "
                        f"parked: {_ranges(missing)}")
    for (command_id, event_type), ids in sorted(by_command.items()):
        if len(ids) > 1:
            problems.append(f"command {command_id} caused {len(ids)} different {event_type} events (ran twice?)")
    return problems


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
