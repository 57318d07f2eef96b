"""Workers as real processes (`storage-worker run`), to kill, restart and signal, and a workload that
drives them through a plain pika connection that survives broker restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika

from tests.conftest import AMQP_URL
from tests.integration.conftest import wait_for
from tests.amqp_helpers import declare_exchanges, retrying

CLI = str(Path(sys.executable).with_name("storage-worker"))


class WorkerProcess:
    def __init__(self, *, host_id: str, prefix: str, state_dir: Path, allowed_root: Path, log_path: Path,
                 launcher: Sequence[str] = (), **settings: Any):
        """`launcher`: argv the worker runs under, e.g. `ip netns exec NS` (it must exec the worker, so
        that signals reach it); settings: STORAGE_WORKER_<NAME> values over the defaults here."""
        self.host_id = host_id
        self.launcher = list(launcher)
        self.prefix = prefix
        self.env = {**os.environ, "STORAGE_WORKER_HOST_ID": host_id, "STORAGE_WORKER_PREFIX": prefix,
                    "STORAGE_WORKER_AMQP_URL": AMQP_URL, "STORAGE_WORKER_STATE_DIR": str(state_dir),
                    "STORAGE_WORKER_ALLOWED_ROOTS": json.dumps([str(allowed_root)]),
                    "STORAGE_WORKER_METRICS_PORT": "0", "STORAGE_WORKER_LOG_LEVEL": "INFO",
                    **{f"STORAGE_WORKER_{k.upper()}": str(v) for k, v in settings.items()}}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*self.launcher, CLI, "run"], env=self.env, stdout=log, stderr=log)
        self.starts += 1
        return self

    def wait_online(self, timeout: float = 30) -> None:
        """Until this process's log says it consumes."""
        wait_for(lambda: self.log_path.exists() and self.log_path.read_text().count('"worker online"') >= self.starts,
                 timeout, f"worker {self.host_id} start #{self.starts}", interval=0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Tally:
    """What came back for a workload."""

    sent: list[str] = field(default_factory=list)
    results: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def originals(self, command_id: str) -> list[dict]:
        return [r for r in self.results[command_id] if not r["duplicate"]]

    def missing(self) -> list[str]:
        return [c for c in self.sent if not self.originals(c)]

    def repeated(self) -> list[str]:
        """Ids with more than one distinct non-duplicate result on the results exchange."""
        return [c for c in self.sent if len({json.dumps(r, sort_keys=True) for r in self.originals(c)}) > 1]

    def redundant(self) -> int:
        """Identical non-duplicate results seen again (a publish confirmed just before a crash)."""
        return sum(max(0, len(self.originals(c)) - 1) for c in self.sent)

    def duplicates(self) -> int:
        return sum(1 for c in self.sent for r in self.replies[c] if r["duplicate"])

    def double_side_effects(self) -> list[str]:
        """Commands for which two different events of the worker's own making were published."""
        return [c for c, ids in self.events.items() if len(ids) > 1]

    def statuses(self) -> Counter:
        return Counter(self.originals(c)[0]["status"] for c in self.sent if self.originals(c))

    def report(self, scenario: str, reruns: int) -> str:
        line = (f"[{scenario}] sent={len(self.sent)} results={sum(1 for c in self.sent if self.originals(c))} "
                f"duplicates={self.duplicates()} redundant={self.redundant()} lost={len(self.missing())} "
                f"double_side_effects={len(self.double_side_effects())} reruns={reruns} "
                f"statuses={dict(self.statuses())}")
        print(line)
        return line


class Workload:
    """Publishes commands and collects results, replies and command-made events on durable queues of
    its own, reconnecting whenever the broker drops it."""

    def __init__(self, prefix: str, host_id: str, amqp_url: str = AMQP_URL):
        self.prefix = prefix
        self.host_id = host_id
        self.amqp_url = amqp_url
        tag = uuid.uuid4().hex[:8]
        self.queues = {"results": f"{prefix}.t-results-{tag}", "replies": f"{prefix}.t-replies-{tag}",
                       "events": f"{prefix}.t-events-{tag}"}
        self.tally = Tally()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._declare()

    def _connect(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _retrying(self, action, timeout: float = 60):
        return retrying(action, self._connect, self._forget_channel, timeout, pause=0.5)

    def _forget_channel(self) -> None:
        self._channel = None

    def _declare(self) -> None:
        def declare(channel):
            declare_exchanges(channel, self.prefix)
            for name in self.queues.values():
                channel.queue_declare(name, durable=True)
            channel.queue_bind(self.queues["results"], f"{self.prefix}.results", f"{self.host_id}.#")
            channel.queue_bind(self.queues["events"], f"{self.prefix}.events", f"{self.host_id}.volume.#")
        self._retrying(declare)

    def send(self, op: str, args: dict, command_id: str | None = None, body: bytes | None = None) -> str:
        command_id = command_id or str(uuid.uuid4())
        payload = body if body is not None else json.dumps({"id": command_id, "op": op, "args": args}).encode()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=command_id,
                                          reply_to=self.queues["replies"], correlation_id=command_id)
        self._retrying(lambda ch: ch.basic_publish(f"{self.prefix}.commands", self.host_id, payload, properties))
        self.tally.sent.append(command_id)
        return command_id

    def collect(self) -> None:
        def drain(channel):
            for kind, queue in self.queues.items():
                while True:
                    method, _properties, body = channel.basic_get(queue, auto_ack=True)
                    if method is None:
                        break
                    message = json.loads(body)
                    if kind == "events":
                        if message.get("commandid"):
                            self.tally.events[message["commandid"]].add(message["id"])
                    elif message.get("id") is not None:
                        getattr(self.tally, kind)[message["id"]].append(message)
        self._retrying(drain)

    def wait_all(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.collect()
            if not self.tally.missing():
                time.sleep(1.0)  # let late repeats and events arrive
                self.collect()
                return
            time.sleep(0.2)

    def answered(self) -> int:
        self.collect()
        return len(self.tally.sent) - len(self.tally.missing())

    def close(self) -> None:
        def delete(channel):
            for name in self.queues.values():
                channel.queue_delete(name)
        try:
            self._retrying(delete, timeout=10)
        finally:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
