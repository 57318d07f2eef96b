"""job.cancel: answered on the intake thread from the worker's own state, never by libvirt, so a
cancel does not wait behind the jobs it may be meant for.

A queued command is withdrawn and ends `cancelled` before it starts; a running one whose operation
is cancellable (its entry in the operation table) is asked to stop (`cancelling`; it ends
`cancelled` when it does); any other running one runs to its end (`not_cancellable`); a command that
ended, or whose result is on its way, is `finished`; an id this host never saw is `not_found`.
"""

from __future__ import annotations

from dataclasses import dataclass

from messages.command import Command
from messages.operations import JOB_CANCEL, OPERATIONS
from messages.payloads import JobCancelState
from messages.results import ErrorCode, Status
from messages.volumes import JobCancelArgs
from worker.errors import not_found
from worker.execution.runner import error_result
from worker.execution.scheduler import Scheduler
from worker.handlers.registry import handles
from worker.intake.inflight import InFlightTable
from worker.intake.settlement import Settlement
from worker.state.journal import Journal, State


@dataclass(frozen=True)
class ControlContext:
    """What a control command may look at and act on: the worker's own state."""

    command: Command
    host: str
    scheduler: Scheduler
    flights: InFlightTable
    journal: Journal
    settlement: Settlement


@handles(JOB_CANCEL)
def cancel(ctl: ControlContext, args: JobCancelArgs) -> JobCancelState:
    target_id = args.id
    job = ctl.scheduler.withdraw(target_id)
    if job is not None:
        flight = ctl.flights.get(target_id)
        target = flight.command
        ctl.settlement.finish(flight, error_result(
            target.id, target.op, ctl.host, Status.cancelled, ErrorCode.cancelled,
            f"cancelled by job.cancel {ctl.command.id!r} before it started", flight.received_at))
        return JobCancelState(id=target_id, state="cancelled")
    job = ctl.scheduler.find(target_id)
    if job is not None:
        if OPERATIONS[ctl.flights.get(target_id).command.op].cancellable:
            job.cancel_requested.set()
            return JobCancelState(id=target_id, state="cancelling")
        return JobCancelState(id=target_id, state="not_cancellable")
    entry = ctl.journal.get(target_id)
    finishing = target_id in ctl.flights  # ran to its end, result not yet confirmed
    if finishing or (entry is not None and entry.state is State.finished):
        return JobCancelState(id=target_id, state="finished")
    raise not_found(f"no command with id {target_id!r} is queued, running or finished on host {ctl.host}")
