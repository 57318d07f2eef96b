"""worker.ops.top.state: the fold of events and results into what `storage-worker top` shows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from messages.events import CloudEvent, EventType
from messages.results import Result
from messages.stream import Gap
from worker.ops.top.state import Fleet

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
GiB = 2**30


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(kind: EventType, data: dict, *, host: str = "kvm-01", when: float = 0, command: str | None = None,
          sequence: int = 1) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=f"/storage-worker/{host}", type=kind, time=at(when), host=host,
                      sequence=str(sequence), commandid=command, data=data)


def worker(kind: EventType, host: str = "kvm-01", when: float = 0, reason: str | None = None) -> CloudEvent:
    return event(kind, {"host_id": host, "hostname": host, "worker_version": "1", "libvirt_uri": "qemu:///system",
                        "reason": reason}, host=host, when=when)


def pool(name: str = "images", *, state: str = "running", capacity: int = 100 * GiB, allocation: int = 10 * GiB,
         kind: EventType = EventType.pool_started, **extra) -> tuple[EventType, dict]:
    return kind, {"pool": {"name": name, "uuid": "u", "type": "dir", "state": state, "persistent": True,
                           "autostart": False, "capacity": capacity, "allocation": allocation,
                           "available": capacity - allocation, "target_path": f"/srv/{name}"}, **extra}


def progress(job: str, done: int, total: int, rate: float, *, when: float, host: str = "kvm-01") -> CloudEvent:
    return event(EventType.job_progress, {"id": job, "op": "volume.upload", "bytes_done": done, "bytes_total": total,
                                          "rate": rate}, host=host, when=when, command=job)


def result(command: str, status: str = "succeeded", *, host: str = "kvm-01", when: float = 0,
           code: str | None = None, duplicate: bool = False) -> Result:
    error = {"code": code, "message": f"it went wrong: {code}", "retryable": False} if code else None
    return Result(id=command, op="volume.upload", host=host, status=status, error=error, attempts=1,
                  duplicate=duplicate, received_at=at(when - 1), started_at=at(when - 1), finished_at=at(when))


def test_hosts_online_offline_libvirt_and_last_seen():
    fleet = Fleet()
    fleet.apply_event(worker(EventType.worker_online, when=0))
    fleet.apply_event(event(*pool(), when=5))
    host = fleet.hosts["kvm-01"]
    assert host.online and host.libvirt_connected and host.last_seen == at(5)
    fleet.apply_event(worker(EventType.libvirt_disconnected, when=6, reason="libvirtd went away"))
    assert host.online and not host.libvirt_connected and host.reason == "libvirtd went away"
    fleet.apply_event(worker(EventType.libvirt_reconnected, when=8))
    assert host.libvirt_connected and host.reason is None
    fleet.apply_event(worker(EventType.worker_offline, when=9, reason="stopped"))
    assert not host.online and host.reason == "stopped" and host.last_seen == at(9)
    fleet.apply_result(result("c0", when=8.5))  # published before the offline, delivered after it
    assert not host.online and host.last_seen == at(9)
    fleet.apply_event(worker(EventType.worker_online, when=20))
    assert host.online and host.reason is None
    # An event older than the last one seen (another source's, delivered later) keeps last-seen.
    fleet.apply_event(event(*pool(), when=15))
    assert host.last_seen == at(20)
    # A host known only from a result is online.
    fleet.apply_result(result("c1", host="kvm-02", when=30))
    assert fleet.hosts["kvm-02"].online and fleet.hosts["kvm-02"].last_seen == at(30)


def test_pools_follow_their_events_and_capacity_alarms():
    fleet = Fleet()
    fleet.apply_event(event(*pool(allocation=10 * GiB), when=1))
    view = fleet.pools[("kvm-01", "images")]
    assert (view.state, view.used, view.low) == ("running", 0.1, False)
    fleet.apply_event(event(*pool(allocation=95 * GiB, kind=EventType.pool_capacity_low, threshold=0.1), when=2))
    view = fleet.pools[("kvm-01", "images")]
    assert view.low and view.used == 0.95 and view.available == 5 * GiB
    fleet.apply_event(event(*pool(allocation=96 * GiB, kind=EventType.pool_refreshed), when=3))
    assert fleet.pools[("kvm-01", "images")].low, "low until capacity.ok"
    fleet.apply_event(event(*pool(allocation=20 * GiB, kind=EventType.pool_capacity_ok, threshold=0.1), when=4))
    assert not fleet.pools[("kvm-01", "images")].low
    fleet.apply_event(event(*pool(state="inactive", kind=EventType.pool_stopped), when=5))
    assert fleet.pools[("kvm-01", "images")].state == "inactive"
    fleet.apply_event(event(*pool("other"), host="kvm-02", when=5))
    assert [p.name for p in fleet.pools_of("kvm-01")] == ["images"]
    fleet.apply_event(event(*pool(kind=EventType.pool_undefined), when=6))
    assert ("kvm-01", "images") not in fleet.pools and ("kvm-02", "other") in fleet.pools


def test_jobs_run_with_rate_and_eta_until_their_result():
    fleet = Fleet(quiet_after=30)
    fleet.apply_event(progress("c1", 100, 1000, 50.0, when=1))
    fleet.apply_event(progress("c1", 400, 1000, 100.0, when=2))
    [job] = fleet.running_jobs(at(3))
    assert (job.done, job.rate, job.eta, job.started, job.updated) == (0.4, 100.0, 6.0, at(1), at(2))
    fleet.apply_result(result("c1", when=4))
    assert fleet.running_jobs(at(4)) == []
    fleet.apply_event(progress("c1", 1000, 1000, 100.0, when=3))  # late, after its result
    assert fleet.running_jobs(at(5)) == [] and not fleet.failures


def test_a_job_ends_with_the_volume_event_its_command_caused_or_a_new_process():
    fleet = Fleet()
    fleet.apply_event(progress("c1", 1, 10, 1.0, when=1))
    fleet.apply_event(progress("c2", 1, 10, 1.0, when=1))
    fleet.apply_event(progress("c3", 1, 10, 1.0, when=1, host="kvm-02"))
    fleet.apply_event(event(EventType.volume_uploaded, {"pool": "images", "origin": "command", "volume": {}},
                            command="c1", when=2))
    assert [j.id for j in fleet.running_jobs(at(3))] == ["c2", "c3"]
    fleet.apply_event(worker(EventType.worker_online, when=3))
    assert [j.id for j in fleet.running_jobs(at(3))] == ["c3"], "a new process of kvm-01: its jobs are over"
    fleet.apply_event(progress("c2", 5, 10, 1.0, when=4))  # resumed by the new process
    assert [j.id for j in fleet.running_jobs(at(4))] == ["c3", "c2"], "oldest first: c2 started again"


def test_a_job_without_progress_for_a_while_is_no_longer_running():
    fleet = Fleet(quiet_after=30)
    fleet.apply_event(progress("old", 5, 10, 0.0, when=0))
    assert [j.id for j in fleet.running_jobs(at(30))] == ["old"]
    assert fleet.running_jobs(at(31)) == []
    assert fleet.jobs["old"].eta is None, "no rate: no ETA"


def test_failures_newest_first_with_their_codes_and_bounded():
    fleet = Fleet(failures_kept=3)
    fleet.apply_result(result("ok1", when=1))
    fleet.apply_result(result("f1", "failed", when=2, code="not_found"))
    fleet.apply_result(result("f2", "rejected", when=3, code="invalid"))
    fleet.apply_result(result("f2", "rejected", when=4, code="invalid", duplicate=True))
    assert [(f.command_id, f.status, f.code) for f in fleet.failures] == [("f2", "rejected", "invalid"),
                                                                         ("f1", "failed", "not_found")]
    assert fleet.failures[0].message == "it went wrong: invalid"
    for n in range(3):
        fleet.apply_result(result(f"c{n}", "cancelled", when=5 + n, code="cancelled"))
    assert [f.command_id for f in fleet.failures] == ["c2", "c1", "c0"]
    assert fleet.results_seen == 7


def test_gaps_are_kept_newest_first():
    fleet = Fleet()
    fleet.apply_gap(Gap("/storage-worker/a", "a", 3, 4))
    fleet.apply_gap(Gap("/storage-worker/b", "b", 9, 9))
    assert [g.host for g in fleet.gaps] == ["b", "a"]
