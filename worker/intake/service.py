"""How a message becomes a result: the parts of the command path, wired together.

    delivery (I/O thread) --> Intake (intake thread): decode, dedupe, policy, control commands
                                   |              \\--> Custody: the journal holds long or overdue commands
                                   v
                         Scheduler (executor threads): claims, then the Runner (handler with retries)
                                   |
                                   v
                         Settlement: journal.finish --> publish the result, confirmed --> ack
                                     (and answer the deliveries that repeated the id)

All parts share one InFlightTable: the commands this process holds until their results are
confirmed. See worker/intake/custody.py for when the journal takes a command from the broker, and
docs/contract.md ("Delivery guarantees") for what this promises.
"""

from __future__ import annotations

import logging
import threading
import time

from messages.operations import OPERATIONS
from messages.results import ErrorCode, Status
from messages.topology import Topology
from worker.clock import utcnow
from worker.execution.runner import Runner, error_result
from worker.execution.scheduler import Job, Scheduler
from worker.intake.custody import Custody, CustodyTimings
from worker.intake.inflight import InFlight, InFlightTable
from worker.intake.intake import Intake
from worker.intake.policy import Policy
from worker.intake.settlement import Settlement
from worker.state.journal import Journal, State
from worker.telemetry.logs import command_context
from worker.telemetry.metrics import Metrics
from worker.transport.port import Delivery, Link
from worker.transport.results import ResultPublisher

log = logging.getLogger(__name__)

# Seconds a redelivered read the journal does not know waits before it runs: the process that had
# it first (a hot standby's peer that lost its connection) writes the results of its reads with its
# heartbeat (worker/intake/custody.py), and a read it finished is answered from there, so one read
# never gets two different answers. It waits holding shared claims on what it reads, so later
# writes of that volume wait for it.
READ_TAKEOVER_WAIT = 3.0
OTHER_RUN_POLL = 0.2  # seconds between looks at the journal while another process runs a command
OTHER_RUN_PUBLISH_WAIT = 30.0  # seconds its result may stay unconfirmed before this process publishes it


class CommandService:
    def __init__(self, *, topology: Topology, link: Link, journal: Journal, scheduler: Scheduler, runner: Runner,
                 owner: str, metrics: Metrics, policy: Policy, timings: CustodyTimings = CustodyTimings()):
        self._link = link
        self._journal = journal
        self._scheduler = scheduler
        self._runner = runner
        self._host = topology.host
        self._owner = owner
        self._timings = timings
        self.flights = InFlightTable()
        self._settlement = Settlement(link=link, journal=journal, results=ResultPublisher(link, topology),
                                      flights=self.flights, metrics=metrics, host=topology.host)
        self._custody = Custody(journal=journal, link=link, flights=self.flights, settlement=self._settlement,
                                owner=owner, timings=timings, resume_soon=lambda: self._intake.resume_soon())
        self._intake = Intake(link=link, journal=journal, flights=self.flights, settlement=self._settlement,
                              custody=self._custody, scheduler=scheduler, policy=policy, host=topology.host,
                              execute=self._execute)

    def start(self) -> None:
        self._custody.start()
        self._intake.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._intake.thread, self._custody.thread]

    def in_flight(self) -> int:
        return len(self.flights)

    def on_delivery(self, delivery: Delivery) -> None:
        """Called on the I/O thread: hand over and return at once."""
        self._intake.on_delivery(delivery)

    def stop_intake(self) -> None:
        self._intake.stop()
        self._custody.stop()

    def requeue_unstarted(self) -> int:
        """Give every command that never started back to the queue (graceful shutdown); the ones
        the journal owns stay there and are resumed at the next start."""
        unstarted = self._scheduler.drain()
        for job in unstarted:
            flight = self.flights.pop(job.id)
            if flight is not None:
                for delivery in [flight.delivery, *flight.repeats]:
                    if delivery is not None:
                        self._link.requeue(delivery)
        return len(unstarted)

    def forget_lost_unstarted(self) -> None:
        """The consume channel is gone: commands that have not started and came only by it leave
        the queue of executors, for the broker gives them to the consumer that takes over (a hot
        standby, or this worker again); run here later, they would run after commands sent after
        them. Commands the journal holds stay."""
        def lost(job: Job) -> bool:
            flight = self.flights.get(job.id)
            return flight is not None and flight.delivery is not None and \
                all(self._link.lost(d) for d in [flight.delivery, *flight.repeats])

        forgotten = self._scheduler.withdraw_where(lost)
        for job in forgotten:
            self.flights.pop(job.id)
        if forgotten:
            log.info("left unstarted commands of a lost channel to the broker", extra={"commands": len(forgotten)})

    def retire(self) -> None:
        """A clean stop: anything this owner still holds is an orphan for the next start."""
        self._custody.retire()

    # ---- executor threads -----------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        flight = self.flights.get(job.id)
        with command_context(flight.command.id, flight.command.op):
            self._run(job, flight)

    def _run(self, job: Job, flight: InFlight) -> None:
        command = flight.command
        started_at = utcnow()
        if command.deadline is not None and command.deadline < started_at:
            result = error_result(command.id, command.op, self._host, Status.rejected, ErrorCode.expired,
                                  f"the deadline {command.deadline.isoformat()} passed before the command "
                                  f"could start at {started_at.isoformat()}", flight.received_at)
        else:
            # A read has nothing to reconcile after a crash: it is neither claimed nor marked running.
            if not OPERATIONS[command.op].read_only and not self._claimed(flight):
                return
            if flight.peer_may_answer and self._answered_by_peer(flight):
                return
            result = self._runner.run(command, received_at=flight.received_at, started_at=started_at,
                                      cancel=job.cancel_requested)
        log.info("command finished", extra={"command_id": command.id, "op": command.op,
                                            "status": result.status.value, "attempts": result.attempts})
        self._settlement.finish(flight, result)

    def _answered_by_peer(self, flight: InFlight) -> bool:
        time.sleep(READ_TAKEOVER_WAIT)
        entry = self._journal.get(flight.command.id)
        if entry is None or entry.state is not State.finished or entry.result is None:
            return False
        self._settlement.from_other_run(flight, entry)
        return True

    def _claimed(self, flight: InFlight) -> bool:
        """Claim the command's run (worker/state/journal.py `start`). While another live process of
        this host runs it, wait here, holding the command's claims so that later commands on its
        volume wait too: once that run has finished and its result is confirmed (or that process
        is gone), answer from the journal; False when answered so."""
        command = flight.command
        holder = self._journal.start(command.id, self._owner, self._timings.stale_after)
        if holder is None:
            return True
        log.info("another process of this host runs the command; waiting for its result",
                 extra={"command_id": command.id, "op": command.op, "runner": holder})
        finished_at = None
        while True:
            time.sleep(OTHER_RUN_POLL)
            entry = self._journal.get(command.id)
            if entry is not None and entry.state is State.finished and entry.result is not None:
                finished_at = finished_at or time.monotonic()
                # its process publishes the result; a copy goes out from here if it cannot
                if entry.published or time.monotonic() - finished_at > OTHER_RUN_PUBLISH_WAIT:
                    self._settlement.from_other_run(flight, entry)
                    return False
            elif self._journal.start(command.id, self._owner, self._timings.stale_after) is None:
                log.info("the process that ran the command is gone; running it here",
                         extra={"command_id": command.id, "op": command.op, "runner": holder})
                return True
