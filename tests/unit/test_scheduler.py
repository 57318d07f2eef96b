"""worker.execution.scheduler + worker.execution.claims: which commands lock what, and how the executor honours it.

Jobs carry the claims of real decoded commands (messages.command.decode -> claims_for), so these
tests check the locking the service actually gets. Concurrency is proven with barriers and events
inside job.run, never with sleeps alone: a barrier that two jobs must reach together can only be
passed when both run at once.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from messages.command import Command, decode
from messages.operations import OPERATIONS
from worker.execution.claims import Mode, claims_for, domain_key, pool_key, volume_key
from worker.execution.scheduler import Job, Scheduler

WAIT = 2.0  # seconds any test waits for something that should happen at once
_ids = itertools.count()


def command(op: str, **args: object) -> Command:
    return decode(json.dumps({"id": f"c{next(_ids)}", "op": op, "args": args}).encode())


def create(pool: str, name: str) -> Command:
    return command("volume.create", pool=pool, name=name, capacity=1024)


def job_for(cmd: Command, run, job_id: str | None = None) -> Job:
    return Job(id=job_id or cmd.id, claims=claims_for(cmd), run=run)


class Recorder:
    """Records when jobs start and finish, and how many run at once per label."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.started: dict[str, threading.Event] = {}

    def started_event(self, label: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(label, threading.Event())

    def run(self, label: str, body=None):
        def run(job: Job) -> None:
            with self.lock:
                self.events.append(("start", label))
            self.started_event(label).set()
            try:
                if body is not None:
                    body(job)
            finally:
                with self.lock:
                    self.events.append(("end", label))
        return run

    def starts(self) -> list[str]:
        with self.lock:
            return [label for kind, label in self.events if kind == "start"]

    def overlapped(self, a: str, b: str) -> bool:
        """True when one of a, b started while the other was running."""
        running: set[str] = set()
        with self.lock:
            for kind, label in self.events:
                if kind == "start":
                    if {a, b} <= running | {label} and label in (a, b):
                        return True
                    running.add(label)
                else:
                    running.discard(label)
        return False


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []
    gates: list[threading.Event] = []

    def make(threads: int, name: str = "executor") -> Scheduler:
        scheduler = Scheduler(threads, name=name)
        scheduler.start()
        made.append(scheduler)
        return scheduler

    make.gates = gates  # events a test registers so teardown can release stuck jobs
    yield make
    for gate in gates:
        gate.set()
    for scheduler in made:
        scheduler.drain()
        scheduler.wait_idle(WAIT)


def gate(make_scheduler) -> threading.Event:
    event = threading.Event()
    make_scheduler.gates.append(event)
    return event


def blocked_on(event: threading.Event):
    def body(job: Job) -> None:
        assert event.wait(WAIT * 2), "test gate never opened"
    return body


def settle() -> None:
    """Give executor threads a moment to take a job they should not be able to take."""
    time.sleep(0.05)


# --- claims_for ------------------------------------------------------------------------------

P, Q = "images", "other"


@pytest.mark.parametrize("op, extra", [
    ("volume.create", {"capacity": 1024}),
    ("volume.resize", {"capacity": 2048}),
    ("volume.wipe", {}),
    ("volume.upload", {"source": {"path": "/var/lib/libvirt/images/in.raw"}}),
    ("volume.delete", {}),
])
def test_volume_writes_share_the_pool_and_take_the_volume(op, extra):
    claims = claims_for(command(op, pool=P, name="vm1", **extra))
    assert claims == ((pool_key(P), Mode.shared), (volume_key(P, "vm1"), Mode.exclusive))


def test_create_with_backing_reads_the_backing_volume_shared():
    claims = dict(claims_for(command("volume.create", pool=P, name="vm1", capacity=1024, format="qcow2",
                                     backing={"pool": Q, "name": "base"})))
    assert claims == {pool_key(P): Mode.shared, volume_key(P, "vm1"): Mode.exclusive,
                      pool_key(Q): Mode.shared, volume_key(Q, "base"): Mode.shared}


def test_clone_within_one_pool_claims_that_pool_once_shared():
    claims = claims_for(command("volume.clone", pool=P, source="base", name="vm1"))
    keys = [key for key, _ in claims]
    assert len(keys) == len(set(keys)), f"a key is claimed twice: {claims}"
    assert dict(claims) == {pool_key(P): Mode.shared, volume_key(P, "vm1"): Mode.exclusive,
                            volume_key(P, "base"): Mode.shared}


def test_clone_across_pools_shares_both_pools():
    claims = dict(claims_for(command("volume.clone", pool=P, source="base", name="vm1", source_pool=Q)))
    assert claims == {pool_key(P): Mode.shared, volume_key(P, "vm1"): Mode.exclusive,
                      pool_key(Q): Mode.shared, volume_key(Q, "base"): Mode.shared}


def test_download_only_reads_the_volume():
    claims = dict(claims_for(command("volume.download", pool=P, name="vm1",
                                     destination={"path": "/var/lib/libvirt/images/out.raw"})))
    assert claims == {pool_key(P): Mode.shared, volume_key(P, "vm1"): Mode.shared}


def test_attach_takes_the_domain_exclusively_and_reads_the_volume():
    claims = dict(claims_for(command("volume.attach", domain="vm", pool=P, name="vm1", target="vdb")))
    assert claims == {pool_key(P): Mode.shared, volume_key(P, "vm1"): Mode.shared,
                      domain_key("vm"): Mode.exclusive}


def test_detach_takes_only_the_domain():
    assert claims_for(command("volume.detach", domain="vm", target="vdb")) == ((domain_key("vm"), Mode.exclusive),)


POOL_WIDE = {
    "pool.define": {"type": "dir", "target": {"path": "/var/lib/libvirt/images/p"}},
    "pool.build": {}, "pool.start": {}, "pool.stop": {}, "pool.delete": {}, "pool.undefine": {},
    "pool.autostart": {"enabled": True}, "pool.refresh": {},
}


@pytest.mark.parametrize("op", sorted(POOL_WIDE))
def test_pool_wide_operations_take_the_pool_exclusively(op):
    assert claims_for(command(op, name=P, **POOL_WIDE[op])) == ((pool_key(P), Mode.exclusive),)


READS = {
    "host.info": {}, "pool.info": {"name": P}, "pool.list": {}, "volume.info": {"pool": P, "name": "vm1"},
    "volume.list": {"pool": P}, "job.cancel": {"id": "c-1"},
}


@pytest.mark.parametrize("op", sorted(READS))
def test_reads_and_control_commands_claim_nothing(op):
    assert claims_for(command(op, **READS[op])) == ()


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_every_operation_that_changes_something_declares_what_it_uses(op):
    """The decision about what an operation locks is its `uses` in the operation table: one that
    changes something (neither a read nor answered by the worker itself) must name what it uses."""
    operation = OPERATIONS[op]
    assert operation.read_only or operation.control or operation.uses, f"{op} locks nothing"


# --- scheduling ------------------------------------------------------------------------------

def run_together(scheduler, commands) -> list[str]:
    """Submit jobs that each wait at a barrier for all the others: they pass (and are listed) only
    if every one of them runs at the same time."""
    together = threading.Barrier(len(commands), timeout=WAIT)
    met: list[str] = []
    finished = threading.Semaphore(0)

    def run(job: Job) -> None:
        try:
            together.wait()  # raises BrokenBarrierError unless the others are running too
            met.append(job.id)
        finally:
            finished.release()

    for index, cmd in enumerate(commands):
        assert scheduler.submit(job_for(cmd, run, str(index)))
    for _ in commands:
        assert finished.acquire(timeout=WAIT * 2)
    return met


def test_jobs_on_different_volumes_run_at_the_same_time(make_scheduler):
    met = run_together(make_scheduler(2), [create(P, "a"), create(P, "b")])
    assert sorted(met) == ["0", "1"]


def test_jobs_on_one_volume_never_overlap_and_run_in_arrival_order(make_scheduler):
    scheduler = make_scheduler(4)
    lock = threading.Lock()
    active = [0]
    most = [0]
    order: list[int] = []
    done = threading.Event()

    def run_as(index: int):
        def run(job: Job) -> None:
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                order.append(index)
            time.sleep(0.01)
            with lock:
                active[0] -= 1
            if index == 5:
                done.set()
        return run

    ops = [create(P, "vm1"), command("volume.resize", pool=P, name="vm1", capacity=4096),
           command("volume.wipe", pool=P, name="vm1"),
           command("volume.upload", pool=P, name="vm1", source={"path": "/var/lib/libvirt/images/x"}),
           command("volume.resize", pool=P, name="vm1", capacity=8192),
           command("volume.delete", pool=P, name="vm1")]
    for index, cmd in enumerate(ops):
        scheduler.submit(job_for(cmd, run_as(index)))
    assert done.wait(WAIT)
    assert order == [0, 1, 2, 3, 4, 5]
    assert most[0] == 1


def test_pool_wide_job_waits_for_volume_jobs_and_is_not_overtaken(make_scheduler):
    scheduler = make_scheduler(3)
    rec = Recorder()
    release_volume_job, release_refresh = gate(make_scheduler), gate(make_scheduler)

    scheduler.submit(job_for(create(P, "x"), rec.run("create-x", blocked_on(release_volume_job))))
    assert rec.started_event("create-x").wait(WAIT)
    scheduler.submit(job_for(command("pool.refresh", name=P), rec.run("refresh", blocked_on(release_refresh))))
    # y is free and the pool is only held shared: without fairness this would start right away.
    scheduler.submit(job_for(create(P, "y"), rec.run("create-y")))
    # Another pool is not affected by the refresh waiting on this one.
    scheduler.submit(job_for(create(Q, "z"), rec.run("create-z")))
    assert rec.started_event("create-z").wait(WAIT)
    settle()
    assert rec.starts() == ["create-x", "create-z"]

    release_volume_job.set()
    assert rec.started_event("refresh").wait(WAIT)
    settle()
    assert "create-y" not in rec.starts(), "a volume job ran while the pool was held exclusively"

    release_refresh.set()
    assert rec.started_event("create-y").wait(WAIT)
    assert rec.starts() == ["create-x", "create-z", "refresh", "create-y"]
    assert scheduler.wait_idle(WAIT)
    assert not rec.overlapped("create-x", "refresh")
    assert not rec.overlapped("refresh", "create-y")


def test_two_downloads_of_one_volume_run_together(make_scheduler):
    downloads = [command("volume.download", pool=P, name="vm1",
                         destination={"path": f"/var/lib/libvirt/images/out{index}"}) for index in range(2)]
    assert len(run_together(make_scheduler(2), downloads)) == 2


def test_an_upload_does_not_run_while_the_volume_is_downloaded(make_scheduler):
    scheduler = make_scheduler(2)
    rec = Recorder()
    release = gate(make_scheduler)
    scheduler.submit(job_for(command("volume.download", pool=P, name="vm1",
                                     destination={"path": "/var/lib/libvirt/images/out"}),
                             rec.run("download", blocked_on(release))))
    assert rec.started_event("download").wait(WAIT)
    scheduler.submit(job_for(command("volume.upload", pool=P, name="vm1",
                                     source={"path": "/var/lib/libvirt/images/in"}), rec.run("upload")))
    settle()
    assert rec.starts() == ["download"]
    release.set()
    assert rec.started_event("upload").wait(WAIT)
    assert not rec.overlapped("download", "upload")


def test_a_job_that_raises_does_not_kill_its_thread(make_scheduler, caplog):
    scheduler = make_scheduler(1)
    ran = threading.Event()

    def crash(job: Job) -> None:
        raise RuntimeError("boom")

    scheduler.submit(job_for(create(P, "vm1"), crash, "crasher"))
    # Same volume: it can only run if the crashed job's claims were released, on the only thread.
    scheduler.submit(job_for(create(P, "vm1"), lambda job: ran.set(), "next"))
    assert ran.wait(WAIT)
    assert any("job crashed" in r.getMessage() and getattr(r, "command_id", None) == "crasher"
               for r in caplog.records)


def test_withdraw_takes_a_queued_job_and_leaves_a_running_one(make_scheduler):
    scheduler = make_scheduler(1)
    rec = Recorder()
    release = gate(make_scheduler)
    scheduler.submit(job_for(create(P, "a"), rec.run("a", blocked_on(release)), "a"))
    assert rec.started_event("a").wait(WAIT)
    queued = job_for(create(P, "b"), rec.run("b"), "b")
    scheduler.submit(queued)

    assert scheduler.find("a") is not None and scheduler.find("a").started
    assert scheduler.find("b") is queued and not queued.started
    assert scheduler.withdraw("a") is None  # running: not withdrawn
    assert scheduler.withdraw("b") is queued
    assert scheduler.withdraw("b") is None
    assert scheduler.withdraw("unknown") is None
    assert scheduler.find("b") is None
    assert scheduler.counts() == (0, 1)

    release.set()
    assert scheduler.wait_idle(WAIT)
    settle()
    assert rec.starts() == ["a"]


def test_withdrawing_a_waiting_pool_job_lets_the_jobs_behind_it_start(make_scheduler):
    scheduler = make_scheduler(2)
    rec = Recorder()
    release = gate(make_scheduler)
    scheduler.submit(job_for(create(P, "x"), rec.run("create-x", blocked_on(release))))
    assert rec.started_event("create-x").wait(WAIT)
    scheduler.submit(job_for(command("pool.stop", name=P), rec.run("stop"), "stop"))
    scheduler.submit(job_for(create(P, "y"), rec.run("create-y")))
    settle()
    assert rec.starts() == ["create-x"]
    assert scheduler.withdraw("stop") is not None
    assert rec.started_event("create-y").wait(WAIT), "the job behind a withdrawn one stayed blocked"


def test_drain_returns_unstarted_jobs_and_stops(make_scheduler):
    scheduler = make_scheduler(1, name="draintest")
    rec = Recorder()
    release = gate(make_scheduler)
    scheduler.submit(job_for(create(P, "a"), rec.run("a", blocked_on(release)), "a"))
    assert rec.started_event("a").wait(WAIT)
    b = job_for(create(P, "b"), rec.run("b"), "b")
    c = job_for(create(Q, "c"), rec.run("c"), "c")
    scheduler.submit(b)
    scheduler.submit(c)

    assert scheduler.drain() == [b, c]
    assert scheduler.submit(job_for(create(P, "d"), rec.run("d"))) is False
    assert scheduler.counts() == (0, 1)
    release.set()
    assert scheduler.wait_idle(WAIT)
    deadline = time.monotonic() + WAIT
    while any(t.name.startswith("draintest-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("draintest-") for t in threading.enumerate()), "executor threads kept running"
    assert rec.starts() == ["a"]


def test_wait_idle_reports_whether_running_jobs_finished_in_time(make_scheduler):
    scheduler = make_scheduler(2)
    rec = Recorder()
    release = gate(make_scheduler)
    assert scheduler.wait_idle(0) is True  # nothing runs
    scheduler.submit(job_for(create(P, "a"), rec.run("a", blocked_on(release))))
    assert rec.started_event("a").wait(WAIT)
    assert scheduler.wait_idle(0.05) is False
    release.set()
    assert scheduler.wait_idle(WAIT) is True
    assert scheduler.counts() == (0, 0)


def test_a_new_job_is_not_lost_while_someone_waits_for_idle(make_scheduler):
    """submit() must wake an executor thread even when another kind of waiter (wait_idle) shares
    the condition: with notify() the wake-up can go to the wait_idle caller and be lost."""
    scheduler = make_scheduler(2)
    rec = Recorder()
    release = gate(make_scheduler)
    scheduler.submit(job_for(create(P, "x"), rec.run("first-x", blocked_on(release))))
    assert rec.started_event("first-x").wait(WAIT)
    settle()  # the second executor thread is waiting now

    idle_waiter = threading.Thread(target=scheduler.wait_idle, args=(WAIT * 2,), daemon=True)
    idle_waiter.start()
    settle()
    # Conflicts with the running job: wakes the idle executor, which finds nothing to take and
    # waits again - now behind the wait_idle caller.
    scheduler.submit(job_for(create(P, "x"), rec.run("second-x")))
    settle()
    scheduler.submit(job_for(create(P, "y"), rec.run("free-y")))
    assert rec.started_event("free-y").wait(1.0), "a runnable job waited while a thread was free"
    release.set()
    idle_waiter.join(WAIT)
