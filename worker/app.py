"""The worker process: wires settings, libvirt, the journal, the executor and the AMQP link, and
runs until a signal asks it to stop."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from messages.events import EventType
from worker.transport.link import AmqpLink, TopologyError
from worker.transport.parameters import node_parameters
from worker.transport.port import Delivery
from worker.transport.topology import declarations
from worker.config import Settings
from worker.watch.attribution import Attribution
from worker.transport.events import EventPublisher, worker_data
from worker.execution.runner import Runner
from worker.state import volume_records
from worker.state.inventory import Inventory
from worker.state.volume_records import VolumeRecords
from worker.telemetry.health import HealthServer
from worker.state.journal import Journal, new_owner_id
from worker.telemetry.metrics import Metrics
from worker.intake.policy import Policy
from worker.watch.monitor import Monitor
from worker.execution.scheduler import Scheduler
from worker.intake.custody import CustodyTimings
from worker.intake.service import CommandService
from worker.virt.event_loop import event_loop_thread
from worker.virt.gateway import LibvirtGateway

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite3"


class Worker:
    def __init__(self, settings: Settings, make_link: Callable[[Callable[[Delivery], None]], Any] | None = None):
        """`make_link(on_delivery)` builds the transport instead of the AMQP link (tests run the
        command path on worker.transport.memory.MemoryLink)."""
        self.settings = settings
        topology = settings.topology
        self.topology = topology
        self._fatal: Exception | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(settings.state_dir / JOURNAL_FILE)
        self.scheduler = Scheduler(settings.concurrency)
        self.link = make_link(self._on_delivery) if make_link is not None else self._amqp_link()
        self.metrics = Metrics()
        self.events = EventPublisher(self.link, topology, self.journal, settings.event_buffer, self.metrics)
        self.inventory = Inventory()
        self.volume_records = VolumeRecords(settings.state_dir / volume_records.FILE)
        self.attribution = Attribution()
        self.gateway = LibvirtGateway(settings.libvirt_uri, on_connect=self._on_libvirt_connect,
                                      on_disconnect=self._on_libvirt_disconnect,
                                      spares=settings.concurrency + 1)  # executors and the monitor
        self.monitor = Monitor(settings, self.gateway, self.events, self.inventory, self.attribution,
                               busy_volumes=self.scheduler.held_volumes, metrics=self.metrics,
                               forget_volume=self.volume_records.forget)
        runner = Runner(settings, self.gateway, self.events, inventory=self.inventory, records=self.volume_records,
                        attribution=self.attribution, touch=self.monitor.touch, metrics=self.metrics)
        self.owner = new_owner_id()
        self.service = CommandService(topology=topology, link=self.link, journal=self.journal,
                                      scheduler=self.scheduler, runner=runner, owner=self.owner, metrics=self.metrics,
                                      policy=Policy.load(settings.policy_file) if settings.policy_file
                                      else Policy.allow_all(),
                                      timings=CustodyTimings(own_after=settings.own_after,
                                                             retention=settings.journal_retention,
                                                             max_rows=settings.journal_max_rows,
                                                             resume_limit=settings.delivery_limit))
        self.metrics.watch(in_flight=self.service.in_flight, broker_connected=lambda: self.link.is_ready,
                           libvirt_connected=lambda: self.gateway.connected, journal_commands=self.journal.count,
                           events_dropped=lambda: self.link.dropped_events,
                           pools=lambda: self.inventory.pools().values(), ready=lambda: not self.unready_parts(),
                           journal_writable=lambda: self.journal.unwritable is None)
        self.health = HealthServer(settings.metrics_port, self.metrics.registry, alive=self.dead_threads,
                                   ready=self.unready_parts) if settings.metrics_port else None

    def _amqp_link(self) -> AmqpLink:
        settings = self.settings
        nodes = node_parameters(
            settings.amqp_url.get_secret_value(), heartbeat=settings.amqp_heartbeat,
            ca_file=_str(settings.amqp_ca_file), cert_file=_str(settings.amqp_cert_file),
            key_file=_str(settings.amqp_key_file), name=f"storage-worker {settings.host_id}")
        return AmqpLink(
            nodes,
            declarations(self.topology, queue_type=settings.queue_type, delivery_limit=settings.delivery_limit,
                         single_active_consumer=settings.single_active_consumer,
                         quorum_group_size=settings.quorum_group_size,
                         event_stream_max_age=settings.event_stream_max_age,
                         event_stream_max_bytes=settings.event_stream_max_bytes),
            queue=self.topology.command_queue, prefetch=settings.prefetch, on_delivery=self._on_delivery,
            event_buffer=settings.event_buffer, on_fatal=self._on_fatal,
            on_disconnected=lambda _reason: self.service.forget_lost_unstarted())

    def dead_threads(self) -> list[str]:
        """/healthz: every thread the worker needs must be alive."""
        threads = [*self.link.threads, *self.service.threads, *self.scheduler.threads, *self.monitor.threads,
                   *self.gateway.threads, event_loop_thread()]
        return [f"thread {t.name if t else 'libvirt-events'} is not running" for t in threads
                if t is None or not t.is_alive()]

    def unready_parts(self) -> list[str]:
        """/readyz: the worker can take commands now."""
        problems = []
        if self._stopping:
            problems.append("the worker is stopping")
        if not self.link.is_ready:
            problems.append("the broker channels are not open")
        elif (heartbeat := self.settings.amqp_heartbeat) and (silent := self.link.silent_for()) > heartbeat:
            problems.append(f"the broker has sent nothing for {silent:.0f} s, longer than the heartbeat timeout "
                            f"({heartbeat} s): the link to it may be cut")
        if self.link.blocked:
            problems.append("the broker blocks publishing (a memory or disk alarm)")
        if not self.gateway.connected:
            problems.append(f"libvirt at {self.settings.libvirt_uri} is not connected")
        if self.journal.unwritable is not None:
            problems.append(self.journal.unwritable)
        return problems

    def _on_libvirt_connect(self, conn: Any) -> None:
        self.monitor.on_connect(conn)

    def _on_libvirt_disconnect(self, reason: str) -> None:
        self.monitor.on_disconnect(reason)

    def _on_delivery(self, delivery: Any) -> None:
        self.service.on_delivery(delivery)

    def _on_fatal(self, error: Exception) -> None:
        self._fatal = error
        self._stopped.set()

    def _worker_event(self, event_type: EventType, reason: str | None = None) -> None:
        self.events.emit(event_type, worker_data(self.settings.host_id, self.settings.libvirt_uri, reason),
                         subject=f"workers/{self.settings.host_id}")

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start every thread; returns once the worker consumes commands."""
        if self.health is not None:
            self.health.start()
        self.events.replay_parked()
        self.monitor.start()
        self.gateway.start()
        self.scheduler.start()
        self.service.start()
        self.link.start()
        if not self.link.wait_ready(ready_timeout):
            if self._fatal is not None:
                raise self._fatal
            raise TimeoutError(f"the broker did not become ready within {ready_timeout} s")
        if self._fatal is not None:
            raise self._fatal
        self._worker_event(EventType.worker_online)
        log.info("worker online", extra={"host_id": self.settings.host_id, "queue": self.topology.command_queue,
                                         "concurrency": self.settings.concurrency})

    def stop(self, grace: float | None = None) -> None:
        """Drain: stop consuming, requeue unstarted commands, let running ones finish within the
        grace period and publish their results, then close."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        self.journal.stop_waiting()  # a journal that cannot be written holds up nothing from now on
        self.link.stop_consuming()
        requeued = self.service.requeue_unstarted()
        finished = self.scheduler.wait_idle(grace)
        if not finished:
            log.warning("operations still running after the grace period", extra={"grace_s": grace})
        self._worker_event(EventType.worker_offline, "stopped" if finished else "grace period exceeded")
        self.service.stop_intake()
        try:
            self.service.retire()
        except sqlite3.OperationalError as error:
            log.error("the clean stop could not be recorded in the journal", extra={"error": str(error)})
        self.monitor.stop()
        self.link.close(timeout=10)
        if self.health is not None:
            self.health.stop()
        self.gateway.close()
        self.volume_records.close()
        self.journal.close()
        log.info("worker stopped", extra={"requeued": requeued})
        self._stopped.set()

    def run_until_signalled(self) -> int:
        """Run until SIGTERM/SIGINT; a second signal exits at once."""
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            if received:
                log.warning("second signal: exiting now")
                os._exit(1)
            received.append(signum)
            log.info("signal received: draining", extra={"signal": signal.Signals(signum).name})
            threading.Thread(target=self.stop, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
        except TopologyError as error:
            log.error(str(error))
            return 2
        while not self._stopped.wait(1.0):
            pass
        if self._fatal is not None:
            log.error("stopping after a fatal error", extra={"error": str(self._fatal)})
            return 2
        return 0


def _str(value: object) -> str | None:
    return None if value is None else str(value)
