"""Publishing CloudEvents (docs/contract.md "Events") to the events exchange.

The sequence number is taken and the publish handed to the I/O thread under one lock; the I/O
thread runs handed-over work in order, so sequence order is publish order.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import sqlite3
import threading
import time
import uuid

from pika.spec import BasicProperties
from pydantic import BaseModel

from messages.events import CONTENT_TYPE, CloudEvent, EventType, WorkerEventData
from messages.topology import Topology
from worker.clock import utcnow
from worker.transport.port import Link, Outgoing
from worker.state.journal import Journal
from worker.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


def worker_data(host_id: str, libvirt_uri: str, reason: str | None = None) -> WorkerEventData:
    from worker import __version__

    return WorkerEventData(host_id=host_id, hostname=socket.gethostname(), worker_version=__version__,
                           libvirt_uri=libvirt_uri, reason=reason)


TRIM_EVERY = 1000


class EventPublisher:
    """With a journal, every event is parked in its outbox until the broker confirms it, so events
    survive the process; the outbox keeps at most `buffer` of them (the oldest go first)."""

    def __init__(self, link: Link, topology: Topology, journal: Journal | None = None, buffer: int = 10_000,
                 metrics: Metrics | None = None):
        self._link = link
        self._topology = topology
        self._journal = journal
        self._buffer = buffer
        self._metrics = metrics
        self._source = f"/storage-worker/{topology.host}"
        self._sequence = itertools.count(1)
        self._incarnation = uuid.uuid4().hex[:16]
        self._emitted = 0
        self._lock = threading.Lock()

    def replay_parked(self) -> int:
        """Publish the events an earlier process parked and never saw confirmed, oldest first."""
        if self._journal is None:
            return 0
        parked = self._journal.parked()
        for item in parked:
            headers = json.loads(item.headers)
            properties = BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2, message_id=headers["id"],
                                         type=headers["type"], app_id="storage-worker")
            self._link.publish(Outgoing(item.exchange, item.routing_key, item.body, properties,
                                        self._unparker(item.seq), droppable=True))
        return len(parked)

    def _unparker(self, seq: int):
        journal = self._journal
        return lambda: journal.unpark([seq])

    def _on_confirmed(self, seq: int | None, observed_at: float | None):
        if seq is None and (observed_at is None or self._metrics is None):
            return None
        journal, metrics = self._journal, self._metrics

        def confirmed() -> None:
            if observed_at is not None and metrics is not None:
                metrics.event_latency.observe(time.monotonic() - observed_at)
            if seq is not None:
                journal.unpark([seq])
        return confirmed

    def emit(self, event_type: EventType, data: BaseModel, *, subject: str | None = None,
             command_id: str | None = None, observed_at: float | None = None) -> CloudEvent:
        """Publish an event; `observed_at` (time.monotonic) is when the change was seen, e.g. when
        libvirt's callback ran: the time from then to the broker's confirm is measured."""
        with self._lock:
            event = CloudEvent(id=str(uuid.uuid4()), source=self._source, type=event_type, subject=subject,
                               time=utcnow(), host=self._topology.host, sequence=str(next(self._sequence)),
                               incarnation=self._incarnation,
                               commandid=command_id, data=data.model_dump(mode="json"))
            body = event.model_dump_json(exclude_none=True).encode()
            properties = BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2, message_id=event.id,
                                         type=event_type.value, app_id="storage-worker")
            seq = None
            if self._journal is not None:
                try:
                    seq = self._journal.park(self._topology.events_exchange, event.routing_key(), body,
                                             json.dumps({"id": event.id, "type": event_type.value}))
                except sqlite3.OperationalError:  # unwritable at shutdown: published without its copy
                    log.warning("event published without its outbox copy: the journal cannot be written",
                                extra={"event_type": event_type.value})
                self._emitted += 1
                if seq is not None and self._emitted % TRIM_EVERY == 0:
                    self._journal.trim_parked(self._buffer)
            self._link.publish(Outgoing(self._topology.events_exchange, event.routing_key(), body, properties,
                                        self._on_confirmed(seq, observed_at), droppable=True))
        if self._metrics is not None:
            self._metrics.event(event_type.value)
        return event
