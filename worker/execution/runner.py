"""Runs one command's handler under the retry policy and turns the outcome into a Result."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from messages.command import Command
from messages.operations import OPERATIONS
from messages.results import ErrorCode, ErrorInfo, Result, Status
from worker.config import Settings
from worker.errors import OperationError
from worker.watch.attribution import Attribution
from worker.clock import utcnow
from worker.transport.events import EventPublisher
from worker.handlers import HANDLERS
from worker.handlers.context import Context
from worker.state.inventory import Inventory
from worker.state.volume_records import VolumeRecords
from worker.telemetry.metrics import Metrics
from worker.execution.retry import RetryPolicy
from worker.virt.gateway import LibvirtGateway

log = logging.getLogger(__name__)

# A policy refusal (a path outside ALLOWED_ROOTS...) is found before anything is done: rejected,
# like bad input. Everything else a handler raises happened while executing: failed.
_STATUS_OF = {ErrorCode.forbidden: Status.rejected, ErrorCode.cancelled: Status.cancelled}


def make_result(*, command_id: str | None, op: str | None, host: str, status: Status,
                received_at: datetime, started_at: datetime | None = None, payload: dict | None = None,
                error: ErrorInfo | None = None, attempts: int = 0) -> Result:
    return Result(id=command_id, op=op, host=host, status=status, result=payload, error=error,
                  attempts=attempts, received_at=received_at, started_at=started_at, finished_at=utcnow())


def error_result(command_id: str | None, op: str | None, host: str, status: Status, code: ErrorCode,
                 message: str, received_at: datetime, started_at: datetime | None = None) -> Result:
    return make_result(command_id=command_id, op=op, host=host, status=status, received_at=received_at,
                       started_at=started_at, error=ErrorInfo(code=code, message=message, retryable=False))


class Runner:
    def __init__(self, settings: Settings, gateway: LibvirtGateway, events: EventPublisher, *,
                 inventory: Inventory | None = None, records: VolumeRecords | None = None,
                 attribution: Attribution | None = None,
                 touch: Callable[[str], None] | None = None, metrics: Metrics | None = None):
        self._settings = settings
        self._gateway = gateway
        self._events = events
        self._inventory = inventory
        self._records = records
        self._attribution = attribution
        self._touch = touch
        self._metrics = metrics
        self._policy = RetryPolicy(settings.retry_attempts, settings.retry_max_seconds,
                                   busy_seconds=settings.busy_wait)

    def _wait_for_libvirt(self, command: Command) -> None:
        """While libvirt is unreachable, wait for the gateway to reconnect: up to LIBVIRT_WAIT, and
        never past the command's deadline."""
        if self._gateway.connected:
            return
        budget = self._settings.libvirt_wait
        if command.deadline is not None:
            budget = min(budget, max(0.0, (command.deadline - utcnow()).total_seconds()))
        if not self._gateway.wait_connected(budget):
            raise OperationError(ErrorCode.unavailable,
                                 f"libvirt at {self._settings.libvirt_uri} did not answer within {budget:.0f} s",
                                 retryable=True)

    def run(self, command: Command, *, received_at: datetime, started_at: datetime,
            cancel: threading.Event) -> Result:
        handler = HANDLERS[command.op]
        ctx = Context(command=command, gateway=self._gateway, settings=self._settings, events=self._events,
                      cancel=cancel, inventory=self._inventory, records=self._records, touch=self._touch)
        operation = OPERATIONS[command.op]
        pool_name = operation.event_pool(command.args)  # the pool whose libvirt events it may cause
        if pool_name is not None and self._attribution is not None:
            self._attribution.begin(pool_name, command.id, operation.causes)
        try:
            return self._run(command, handler, ctx, received_at=received_at, started_at=started_at)
        finally:
            if pool_name is not None and self._attribution is not None:
                self._attribution.end(pool_name, command.id)

    def _run(self, command: Command, handler, ctx: Context, *, received_at: datetime,
             started_at: datetime) -> Result:
        host = self._settings.host_id

        def attempt():
            self._wait_for_libvirt(command)
            return handler(ctx, command.args)

        def on_retry(error: OperationError, attempt: int) -> None:
            log.warning("retrying after a transient error",
                        extra={"command_id": command.id, "op": command.op, "attempt": attempt,
                               "code": error.code.value, "error": error.message})
            if self._metrics is not None:
                self._metrics.retry(command.op, error.code.value)

        try:
            payload, attempts = self._policy.run(attempt,
                                                 connection_alive=self._gateway.is_alive,
                                                 forget_connection=self._gateway.invalidate,
                                                 forget_pools=self._gateway.forget_pools, on_retry=on_retry)
        except OperationError as error:
            status = _STATUS_OF.get(error.code, Status.failed)
            return make_result(command_id=command.id, op=command.op, host=host, status=status,
                               received_at=received_at, started_at=started_at, error=error.info(),
                               attempts=error.attempts or 1)
        except Exception as error:  # a bug must end this command, never the worker
            log.exception("handler crashed", extra={"command_id": command.id, "op": command.op})
            return make_result(command_id=command.id, op=command.op, host=host, status=Status.failed,
                               received_at=received_at, started_at=started_at, attempts=1,
                               error=ErrorInfo(code=ErrorCode.internal, retryable=False,
                                               message=f"internal error in {command.op}: "
                                                       f"{type(error).__name__}: {error}"))
        return make_result(command_id=command.id, op=command.op, host=host, status=Status.succeeded,
                           received_at=received_at, started_at=started_at,
                           payload=payload.model_dump(mode="json"), attempts=attempts)
