"""What every benchmark needs: a worker process of its own, a libvirt pool, AMQP request/reply
clients (serial and pipelined), timing and the result table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pika

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
LIBVIRT_URI = "qemu:///system"
IMAGES = Path("/var/lib/libvirt/images")
MiB = 2**20
GiB = 2**30
CLI = str(Path(sys.executable).with_name("storage-worker"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(share * (len(ordered) - 1)))))
    return ordered[index]


@dataclass
class Row:
    area: str
    measure: str
    worker: str
    baseline: str
    ratio: float | None
    target: str
    ok: bool | None
    note: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        mark = "" if row.ok is None else ("ok" if row.ok else "MISS")
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        print(f"  {row.area:<10} {row.measure:<52} {row.worker:>16} {row.baseline:>16} {ratio:>8} "
              f"{row.target:<14} {mark}", flush=True)

    def render(self) -> str:
        header = ("| area | measure | worker | baseline | ratio | target | met |\n"
                  "|---|---|---:|---:|---:|---|---|\n")
        lines = [f"| {r.area} | {r.measure} | {r.worker} | {r.baseline} | "
                 f"{'' if r.ratio is None else f'{r.ratio:.2f}x'} | {r.target} | "
                 f"{'' if r.ok is None else ('yes' if r.ok else 'NO')} |" for r in self.rows]
        return header + "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BenchPool:
    """A running dir pool under /var/lib/libvirt/images (inside the worker's allowed root)."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.path = root / name
        self.conn = libvirt.open(LIBVIRT_URI)
        self.handle = self.conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{self.path}</path></target></pool>",
            libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)

    def volume(self, name: str, capacity: int, allocation: int = 0) -> libvirt.virStorageVol:
        return self.handle.createXML(f"<volume><name>{name}</name><capacity>{capacity}</capacity>"
                                     f"<allocation>{allocation}</allocation></volume>", 0)

    def remove(self) -> None:
        try:
            for volume in self.handle.listAllVolumes(0):
                volume.delete(0)
            self.handle.destroy()
        except libvirt.libvirtError:
            pass
        shutil.rmtree(self.path, ignore_errors=True)
        self.conn.close()


class WorkerProcess:
    """`storage-worker run` in its own process, with its own prefix, host id and state."""

    def __init__(self, tag: str, root: Path, state: Path, **settings: Any):
        self.host_id = f"bench-{tag}"
        self.prefix = f"bench-{tag}"
        self.metrics_port = free_port()
        self.log = state / "worker.log"
        state.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "STORAGE_WORKER_HOST_ID": self.host_id, "STORAGE_WORKER_PREFIX": self.prefix,
               "STORAGE_WORKER_AMQP_URL": AMQP_URL, "STORAGE_WORKER_STATE_DIR": str(state),
               "STORAGE_WORKER_ALLOWED_ROOTS": json.dumps([str(root)]),
               "STORAGE_WORKER_METRICS_PORT": str(self.metrics_port), "STORAGE_WORKER_LOG_LEVEL": "WARNING",
               **{f"STORAGE_WORKER_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process = subprocess.Popen([CLI, "run"], env=env, stdout=open(self.log, "ab"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the worker did not become ready; see {self.log}")

    def rss(self) -> int:
        return _status_field(self.process.pid, "VmRSS")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        for queue in (f"{self.prefix}.commands.{self.host_id}", f"{self.prefix}.dead"):
            channel.queue_delete(queue)
        for exchange in ("commands", "results", "events", "dlx"):
            channel.exchange_delete(f"{self.prefix}.{exchange}")
        connection.close()


class CpuMeter:
    """CPU seconds (user + system) that processes spend between `start()` and `per(count)`: the
    worker, the broker, libvirtd and this process (the benchmark's client)."""

    def __init__(self, worker_pid: int):
        self.pids = {"worker": worker_pid, "broker": _pid_of("beam.smp"), "libvirtd": _pid_of("libvirtd")}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        seconds = {name: _cpu_seconds(pid) for name, pid in self.pids.items() if pid is not None}
        seconds["client"] = time.process_time()
        return seconds

    def start(self) -> None:
        self._before = self._now()

    def per(self, count: int) -> dict[str, float]:
        """Seconds of CPU per item for each process since `start()`."""
        after = self._now()
        return {name: (after[name] - self._before[name]) / count for name in after}


def _pid_of(name: str) -> int | None:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Requester:
    """Request/reply over direct reply-to: serial calls and a pipeline with N in flight."""

    def __init__(self, exchange: str, routing_key: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.replies: dict[str, bytes] = {}
        self.channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, _ch: Any, _method: Any, properties: Any, body: bytes) -> None:
        started = self.sent_at.pop(properties.correlation_id, None)
        if started is not None:
            self.latencies.append(time.perf_counter() - started)
            self.replies[properties.correlation_id] = body

    def send(self, body: bytes, correlation_id: str) -> None:
        self.sent_at[correlation_id] = time.perf_counter()
        self.channel.basic_publish(self.exchange, self.routing_key, body,
                                   pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=correlation_id,
                                                        content_type="application/json", delivery_mode=2))

    def serial(self, bodies: list[tuple[str, bytes]]) -> list[float]:
        self.latencies = []
        for correlation_id, body in bodies:
            self.send(body, correlation_id)
            while correlation_id in self.sent_at:
                self.connection.process_data_events(time_limit=None)
        return self.latencies

    def pipelined(self, bodies: list[tuple[str, bytes]], in_flight: int) -> float:
        """Messages per second with `in_flight` outstanding requests."""
        self.latencies = []
        pending = list(reversed(bodies))
        began = time.perf_counter()
        while pending or self.sent_at:
            while pending and len(self.sent_at) < in_flight:
                correlation_id, body = pending.pop()
                self.send(body, correlation_id)
            self.connection.process_data_events(time_limit=None)
        return len(bodies) / (time.perf_counter() - began)

    def expect_succeeded(self, what: str) -> None:
        """Every result received so far succeeded (a benchmark must not time failures); forget them."""
        failed = [body for body in self.replies.values() if json.loads(body).get("status") != "succeeded"]
        self.replies = {}
        if failed:
            raise RuntimeError(f"{len(failed)} {what} results did not succeed, e.g. {failed[0][:300]!r}")

    def close(self) -> None:
        self.connection.close()


def command(op: str, args: dict) -> tuple[str, bytes]:
    command_id = str(uuid.uuid4())
    return command_id, json.dumps({"id": command_id, "op": op, "args": args}).encode()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def histogram_quantile(text: str, name: str, share: float, before: dict[float, float] | None = None) -> float:
    """A quantile from a Prometheus histogram's cumulative buckets (minus an earlier reading), by
    linear interpolation inside the bucket."""
    buckets = histogram_buckets(text, name)
    if before:
        buckets = {le: count - before.get(le, 0.0) for le, count in buckets.items()}
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    if total <= 0:
        return float("nan")
    wanted, lower, lower_count = share * total, 0.0, 0.0
    for edge in edges:
        if buckets[edge] >= wanted:
            if edge == float("inf"):
                return lower
            span = buckets[edge] - lower_count
            return lower + (edge - lower) * ((wanted - lower_count) / span if span else 1.0)
        lower, lower_count = edge, buckets[edge]
    return lower


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            found[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return found


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - began


def call_timed(client: Requester, op: str, args: dict) -> float:
    return client.serial([command(op, args)])[0]


def settle() -> None:
    """Start each timed transfer from the same state: dirty pages written, page cache dropped."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def best_of(rounds: int, worker_run, baseline_run) -> tuple[float, float]:
    """Each side's best time over `rounds`, alternating which goes first (ABBA)."""
    worker_times, baseline_times = [], []
    for index in range(rounds):
        order = [(worker_run, worker_times), (baseline_run, baseline_times)]
        for run, times in (order if index % 2 == 0 else reversed(order)):
            settle()
            times.append(run())
    return min(worker_times), min(baseline_times)
