"""Prometheus metrics of one worker, in a registry of its own (several workers may share a process
in tests). Counters are bumped where things happen; gauges are read when Prometheus scrapes.
Pools are labelled by name; volumes never are (their number is unbounded)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from messages.objects import PoolObject
from messages.results import Result

LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
                   0.075, 0.1, 0.25, 1)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)


class _Pools(Collector):
    def __init__(self, pools: Callable[[], Iterable[PoolObject]]):
        self._pools = pools

    def collect(self):
        families = {field: GaugeMetricFamily(f"storage_worker_pool_{field}_bytes",
                                             f"The pool's {field} as libvirt last reported it", labels=["pool"])
                    for field in ("capacity", "allocation", "available")}
        for pool in self._pools():
            for field, family in families.items():
                family.add_metric([pool.name], getattr(pool, field))
        yield from families.values()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter("storage_worker_commands", "Terminal results by operation and status",
                                ["op", "status"], registry=r)
        self.duration = Histogram("storage_worker_command_duration_seconds",
                                  "Time from a command's start to its result, by operation", ["op"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.retries = Counter("storage_worker_retries", "Retries after transient errors, by operation and code",
                               ["op", "code"], registry=r)
        self.events = Counter("storage_worker_events_published", "Events published, by type", ["type"], registry=r)
        self.reconcile_seconds = Gauge("storage_worker_reconcile_seconds",
                                       "How long the last full re-listing of pools and volumes took", registry=r)
        self.event_latency = Histogram("storage_worker_event_latency_seconds",
                                       "From libvirt's pool callback to the broker's confirm of the event",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def watch(self, *, in_flight: Callable[[], int], broker_connected: Callable[[], bool],
              libvirt_connected: Callable[[], bool], journal_commands: Callable[[], int],
              events_dropped: Callable[[], int], pools: Callable[[], Iterable[PoolObject]],
              ready: Callable[[], bool], journal_writable: Callable[[], bool]) -> None:
        """Gauges read at scrape time from the worker's parts."""
        r = self.registry
        for name, doc, read in (
                ("storage_worker_commands_in_flight", "Commands received and not yet answered", in_flight),
                ("storage_worker_broker_connected", "1 while the broker channels are open", broker_connected),
                ("storage_worker_libvirt_connected", "1 while the libvirt connection is open", libvirt_connected),
                ("storage_worker_journal_commands", "Commands the journal holds", journal_commands),
                ("storage_worker_events_dropped", "Events dropped while the broker was unreachable", events_dropped),
                ("storage_worker_ready", "1 while /readyz answers ready", ready),
                ("storage_worker_journal_writable", "1 while the journal can be written", journal_writable)):
            Gauge(name, doc, registry=r).set_function(lambda read=read: float(read()))
        r.register(_Pools(pools))

    def result(self, result: Result) -> None:
        op = result.op or "unknown"
        self.commands.labels(op, result.status.value).inc()
        if result.started_at is not None:
            self.duration.labels(op).observe((result.finished_at - result.started_at).total_seconds())

    def retry(self, op: str, code: str) -> None:
        self.retries.labels(op, code).inc()

    def event(self, event_type: str) -> None:
        self.events.labels(event_type).inc()
