"""What `storage-worker top` knows about the fleet, folded from events and results alone — what any
monitoring consumer sees, nothing more. Pure: no AMQP, no terminal, time passed in.

Some things a consumer cannot know, and how the fold deals with them:
- A host is online from its `worker.online` (or any later event) to its `worker.offline`. A worker
  killed outright publishes no offline: it stays online, its last-seen time growing.
- A job runs from its first `job.progress` to its result, a volume event its command caused (the
  upload's `volume.uploaded`, say), or a new process of its worker. Results are not in the stream: a
  job replayed from history whose end came before the view started has none of these, so a job
  without progress for `quiet_after` seconds is no longer shown as running.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from messages.events import CloudEvent, EventType
from messages.results import Result, Status
from messages.stream import Gap

JOB_QUIET_AFTER = 30.0  # seconds without progress after which a job no longer counts as running
FAILURES_KEPT = 10
FINISHED_KEPT = 10_000  # ids of finished jobs remembered, so late progress does not revive them


@dataclass
class HostView:
    host: str
    online: bool
    last_seen: datetime
    libvirt_connected: bool = True
    reason: str | None = None  # why it went offline or lost libvirt, as the worker said


@dataclass
class PoolView:
    host: str
    name: str
    state: str
    capacity: int
    allocation: int
    available: int
    updated: datetime
    low: bool = False  # between storage.pool.capacity.low and .ok

    @property
    def used(self) -> float:
        return self.allocation / self.capacity if self.capacity else 0.0


@dataclass
class JobView:
    id: str
    host: str
    op: str
    bytes_done: int
    bytes_total: int
    rate: float
    started: datetime
    updated: datetime

    @property
    def done(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the last rate; None when nothing moved."""
        if self.rate <= 0 or not self.bytes_total:
            return None
        return max(0, self.bytes_total - self.bytes_done) / self.rate


@dataclass(frozen=True)
class Failure:
    at: datetime
    host: str
    op: str
    status: str
    code: str
    message: str
    command_id: str | None


class Fleet:
    def __init__(self, *, quiet_after: float = JOB_QUIET_AFTER, failures_kept: int = FAILURES_KEPT):
        self.quiet_after = quiet_after
        self.hosts: dict[str, HostView] = {}
        self.pools: dict[tuple[str, str], PoolView] = {}
        self.jobs: dict[str, JobView] = {}
        self.failures: deque[Failure] = deque(maxlen=failures_kept)
        self.gaps: deque[Gap] = deque(maxlen=failures_kept)
        self.events_seen = 0
        self.results_seen = 0
        self._finished: OrderedDict[str, None] = OrderedDict()

    # ---- input -----------------------------------------------------------------------------------

    def apply_event(self, event: CloudEvent) -> None:
        self.events_seen += 1
        host = self._seen(event.host, event.time)
        kind, data = event.type, event.data
        if kind is EventType.worker_offline:
            host.online, host.reason = False, data.get("reason")
            self._end_jobs_of(event.host)
            return
        host.online = True
        if kind is EventType.worker_online:
            host.libvirt_connected, host.reason = True, None
            self._end_jobs_of(event.host)
        elif kind is EventType.libvirt_disconnected:
            host.libvirt_connected, host.reason = False, data.get("reason")
        elif kind is EventType.libvirt_reconnected:
            host.libvirt_connected, host.reason = True, None
        elif kind is EventType.job_progress:
            self._progress(event)
        elif kind.value.startswith("storage.volume."):
            if event.commandid is not None:
                self._finish(event.commandid)
        elif "pool" in data and isinstance(data["pool"], dict):
            self._pool(event)

    def apply_result(self, result: Result) -> None:
        self.results_seen += 1
        host = self.hosts.get(result.host)
        if host is None or result.finished_at >= host.last_seen:  # not one from before an offline
            self._seen(result.host, result.finished_at).online = True
        if result.id is not None:
            self._finish(result.id)
        if result.status is not Status.succeeded and not result.duplicate:
            error = result.error
            self.failures.appendleft(Failure(
                at=result.finished_at, host=result.host, op=result.op or "unknown", status=result.status.value,
                code=error.code.value if error is not None else "", message=error.message if error is not None else "",
                command_id=result.id))

    def apply_gap(self, gap: Gap) -> None:
        self.gaps.appendleft(gap)

    # ---- questions -------------------------------------------------------------------------------

    def running_jobs(self, now: datetime) -> list[JobView]:
        """Jobs with progress in the last `quiet_after` seconds, oldest first."""
        return sorted((job for job in self.jobs.values() if (now - job.updated).total_seconds() <= self.quiet_after),
                      key=lambda job: job.started)

    def pools_of(self, host: str) -> list[PoolView]:
        return sorted((pool for (owner, _), pool in self.pools.items() if owner == host), key=lambda p: p.name)

    # ---- the fold --------------------------------------------------------------------------------

    def _seen(self, name: str, at: datetime) -> HostView:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = HostView(name, online=True, last_seen=at)
        host.last_seen = max(host.last_seen, at)
        return host

    def _pool(self, event: CloudEvent) -> None:
        pool = event.data["pool"]
        key = (event.host, pool["name"])
        if event.type is EventType.pool_undefined:
            self.pools.pop(key, None)
            return
        view = self.pools.get(key)
        low = view.low if view is not None else False
        if event.type is EventType.pool_capacity_low:
            low = True
        elif event.type is EventType.pool_capacity_ok:
            low = False
        self.pools[key] = PoolView(host=event.host, name=pool["name"], state=pool["state"],
                                   capacity=pool["capacity"], allocation=pool["allocation"],
                                   available=pool["available"], updated=event.time, low=low)

    def _progress(self, event: CloudEvent) -> None:
        data = event.data
        job_id = data["id"]
        if job_id in self._finished:
            return
        job = self.jobs.get(job_id)
        started = job.started if job is not None else event.time
        self.jobs[job_id] = JobView(id=job_id, host=event.host, op=data["op"], bytes_done=data["bytes_done"],
                                    bytes_total=data["bytes_total"], rate=data["rate"], started=started,
                                    updated=event.time)

    def _finish(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._finished[job_id] = None
        if len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _end_jobs_of(self, host: str) -> None:
        """A new or stopped process: its jobs ended, or come back with progress of their own."""
        for job_id in [job.id for job in self.jobs.values() if job.host == host]:
            del self.jobs[job_id]
