"""The executor: a bounded pool of threads that runs jobs as soon as their resource claims allow.

A job waiting for a lock does not hold a thread: jobs wait in one FIFO and a free thread takes the
first whose claims can be granted. Fairness is per resource: a job never overtakes an earlier
waiting job it conflicts with, so operations on one volume run in arrival order and a pool-wide
operation is not starved by a stream of volume operations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.execution.claims import Claim, Key, Mode, conflicts

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    id: str
    claims: tuple[Claim, ...]
    run: Callable[["Job"], None]
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started: bool = False


class _Holders:
    """Who holds a resource now: a count of shared holders, or one exclusive holder."""

    __slots__ = ("shared", "exclusive")

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False

    def grants(self, mode: Mode) -> bool:
        if self.exclusive:
            return False
        return mode == Mode.shared or self.shared == 0


class Scheduler:
    def __init__(self, threads: int, name: str = "executor"):
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        self._lock = threading.Lock()
        # Executors wait on `_work`, wait_idle() callers on `_idle`: a wake-up meant for one kind
        # never lands on the other, and no event wakes every executor at once.
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._waiting: list[Job] = []
        self._running: dict[str, Job] = {}
        self._held: dict[Key, _Holders] = {}
        self._accepting = True
        self._stopping = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the scheduler no longer accepts work."""
        with self._lock:
            if not self._accepting:
                return False
            self._waiting.append(job)
            self._work.notify()
        return True

    def find(self, job_id: str) -> Job | None:
        """A job that is waiting or running, by id."""
        with self._lock:
            if job_id in self._running:
                return self._running[job_id]
            return next((job for job in self._waiting if job.id == job_id), None)

    def withdraw(self, job_id: str) -> Job | None:
        """Take a job that has not started out of the queue; None if it is not waiting."""
        with self._lock:
            for index, job in enumerate(self._waiting):
                if job.id == job_id:
                    del self._waiting[index]
                    self._work.notify()  # a later job it blocked (same resource) may run now
                    return job
        return None

    def withdraw_where(self, unwanted: Callable[[Job], bool]) -> list[Job]:
        """Take every job that has not started and is `unwanted` out of the queue."""
        with self._lock:
            taken = [job for job in self._waiting if unwanted(job)]
            if taken:
                gone = {id(job) for job in taken}
                self._waiting = [job for job in self._waiting if id(job) not in gone]
                self._work.notify_all()
        return taken

    def held_volumes(self, pool: str) -> set[str]:
        """Names of a pool's volumes that running jobs hold locked."""
        with self._lock:
            return {key[2] for key in self._held if key[0] == "volume" and key[1] == pool}

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._waiting), len(self._running)

    def drain(self) -> list[Job]:
        """Stop accepting and starting jobs; return the ones that never started."""
        with self._lock:
            self._accepting = False
            self._stopping = True
            unstarted, self._waiting = self._waiting, []
            self._work.notify_all()
        return unstarted

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no job runs; True if that happened within the timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._running, timeout)

    # ---- executor threads ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                job = self._work.wait_for(lambda: self._stopping or self._take_runnable())
                if not isinstance(job, Job):
                    return
                if self._waiting:
                    self._work.notify()  # there may be more to start: pass the baton
            try:
                job.run(job)
            except BaseException:  # a job must never take its thread down with it
                log.exception("job crashed", extra={"command_id": job.id})
            finally:
                with self._lock:
                    self._release(job)
                    if self._waiting:
                        self._work.notify()  # released claims may let a waiting job start
                    if not self._running:
                        self._idle.notify_all()

    def _take_runnable(self) -> Job | None:
        """Under the lock: remove and return the first job whose claims can be granted."""
        blocked: dict[Key, Mode] = {}
        for index, job in enumerate(self._waiting):
            if all(self._grantable(key, mode, blocked) for key, mode in job.claims):
                del self._waiting[index]
                for key, mode in job.claims:
                    holders = self._held.setdefault(key, _Holders())
                    if mode == Mode.exclusive:
                        holders.exclusive = True
                    else:
                        holders.shared += 1
                job.started = True
                self._running[job.id] = job
                return job
            for key, mode in job.claims:
                if blocked.get(key) != Mode.exclusive:
                    blocked[key] = mode
        return None

    def _grantable(self, key: Key, mode: Mode, blocked: dict[Key, Mode]) -> bool:
        earlier = blocked.get(key)
        if earlier is not None and conflicts(earlier, mode):
            return False
        holders = self._held.get(key)
        return holders is None or holders.grants(mode)

    def _release(self, job: Job) -> None:
        self._running.pop(job.id, None)
        for key, mode in job.claims:
            holders = self._held[key]
            if mode == Mode.exclusive:
                holders.exclusive = False
            else:
                holders.shared -= 1
            if not holders.exclusive and holders.shared == 0:
                del self._held[key]
