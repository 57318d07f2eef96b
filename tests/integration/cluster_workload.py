"""A workload that drives workers on the three-node cluster and survives every node fault.

Commands go out through one connection with publisher confirms; when its node dies, is cut off or
nacks, the command is published again under the same id, on a new channel or through another node
(each such publish is a *re-send*, counted). Results, replies and command-made events come back on
quorum queues of the workload's own (a classic queue would be lost with its node), read by a thread
with a connection of its own that fails over the same way, acknowledging only what it recorded.
A message the broker hands over again after a consumer connection was lost is recognised (same
body, `redelivered`) and not counted twice.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from tests.amqp_helpers import CONNECTION_TROUBLE, declare_exchanges, retrying

QUORUM = {"x-queue-type": "quorum"}


def parameters(urls: list[str], name: str) -> list[pika.URLParameters]:
    """The nodes, with short timeouts: a silent cut is noticed within seconds."""
    found = []
    for url in urls:
        node = pika.URLParameters(url)
        node.heartbeat = 4
        node.socket_timeout = 3
        node.connection_attempts = 1
        node.blocked_connection_timeout = 60
        node.client_properties = {"connection_name": name}
        found.append(node)
    return found


@dataclass
class Arrivals:
    """What came back, by command id."""

    results: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: (monotonic time, command id) of every first result of a command on the results exchange
    first_results: list[tuple[float, str]] = field(default_factory=list)


class ClusterWorkload:
    def __init__(self, urls: list[str], prefix: str, hosts: list[str]):
        self.urls = list(urls)
        self.prefix = prefix
        self.hosts = hosts
        tag = uuid.uuid4().hex[:8]
        self.queues = {"results": f"{prefix}.t-results-{tag}", "replies": f"{prefix}.t-replies-{tag}",
                       "events": f"{prefix}.t-events-{tag}"}
        self.sent: dict[str, tuple[str, str, dict]] = {}  # id -> (host, op, args)
        self.sent_at: dict[str, float] = {}
        self.resends = 0
        self.arrivals = Arrivals()
        self._lock = threading.Lock()
        self._node = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._stop = threading.Event()
        self._declare()
        self._reader = threading.Thread(target=self._read, name="workload-reader", daemon=True)
        self._reader.start()

    # ---- connections -------------------------------------------------------------------------

    def _connect(self, name: str) -> pika.BlockingConnection:
        """A connection to the first node that answers, starting after the one used last."""
        nodes = parameters(self.urls, name)
        self._node = (self._node + 1) % len(nodes)
        return pika.BlockingConnection(nodes[self._node:] + nodes[:self._node])

    def _publish_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            self._connection = self._connect("cluster-workload publisher")
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _drop_connection(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except CONNECTION_TROUBLE:
            pass
        self._connection = self._channel = None

    def _retrying(self, action, timeout: float = 120):
        return retrying(action, self._publish_channel, self._drop_connection, timeout, pause=0.2)

    def _declare(self) -> None:
        def declare(channel):
            declare_exchanges(channel, self.prefix)
            for name in self.queues.values():
                channel.queue_declare(name, durable=True, arguments=QUORUM)
            for host in self.hosts:
                channel.queue_bind(self.queues["results"], f"{self.prefix}.results", f"{host}.#")
                channel.queue_bind(self.queues["events"], f"{self.prefix}.events", f"{host}.volume.#")
        self._retrying(declare)

    # ---- sending -----------------------------------------------------------------------------

    def send(self, host: str, op: str, args: dict, timeout: float = 120) -> str:
        """Publish until the broker confirms it; every publish after the first is a re-send."""
        command_id = str(uuid.uuid4())
        body = json.dumps({"id": command_id, "op": op, "args": args}).encode()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=command_id,
                                          reply_to=self.queues["replies"], correlation_id=command_id)
        end = time.monotonic() + timeout
        attempts = 0  # publishes that may have reached a node (connecting to none is not one)
        while True:
            if time.monotonic() > end:
                raise AssertionError(f"command {command_id} ({op}) not confirmed by any node within {timeout} s")
            try:
                channel = self._publish_channel()
            except CONNECTION_TROUBLE:
                self._drop_connection()
                time.sleep(0.2)
                continue
            attempts += 1
            try:
                channel.basic_publish(f"{self.prefix}.commands", host, body, properties, mandatory=True)
                break
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                # a quorum queue without a leader (an election) nacks; RabbitMQ 3.10 may go on
                # nacking the channel that published then, so the next try gets a new one
                try:
                    if channel.is_open:
                        channel.close()
                except CONNECTION_TROUBLE:
                    self._drop_connection()
                self._channel = None
            except CONNECTION_TROUBLE:
                self._drop_connection()
            time.sleep(min(1.0, 0.1 * attempts))
        with self._lock:
            self.resends += attempts - 1
            self.sent[command_id] = (host, op, args)
            self.sent_at[command_id] = time.monotonic()
        return command_id

    # ---- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._connect("cluster-workload reader")
            except CONNECTION_TROUBLE:
                time.sleep(0.3)
                continue
            try:
                channel = connection.channel()
                channel.basic_qos(prefetch_count=500)
                for kind, queue in self.queues.items():
                    channel.basic_consume(queue, lambda ch, method, _props, body, kind=kind:
                                          self._record(ch, method, kind, body))
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.2)
                connection.close()
            except CONNECTION_TROUBLE:
                try:
                    if connection.is_open:
                        connection.close()
                except CONNECTION_TROUBLE:
                    pass
                time.sleep(0.2)

    def _record(self, channel: Any, method: Any, kind: str, body: bytes) -> None:
        message = json.loads(body)
        with self._lock:
            if kind == "events":
                if message.get("commandid"):
                    self.arrivals.events[message["commandid"]].add(message["id"])
            elif message.get("id") is not None:
                seen = getattr(self.arrivals, kind)[message["id"]]
                if not (method.redelivered and message in seen):
                    if kind == "results" and not seen:
                        self.arrivals.first_results.append((time.monotonic(), message["id"]))
                    seen.append(message)
        channel.basic_ack(method.delivery_tag)

    # ---- what came back ----------------------------------------------------------------------

    def originals(self, command_id: str) -> list[dict]:
        """Non-duplicate results of a command: from the results exchange and its replies."""
        with self._lock:
            return [r for r in self.arrivals.results[command_id] + self.arrivals.replies[command_id]
                    if not r["duplicate"]]

    def missing(self) -> list[str]:
        with self._lock:
            return [c for c in self.sent if not self.arrivals.results[c] or not self.arrivals.replies[c]]

    def wait_all(self, timeout: float) -> None:
        """Until every command has its result on the results exchange and a reply (then a moment for
        late repeats)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.missing():
            time.sleep(0.2)
        time.sleep(1.0)

    def conflicting(self) -> list[str]:
        """Ids with two different non-duplicate results."""
        return [c for c in self.sent if len({json.dumps(r, sort_keys=True) for r in self.originals(c)}) > 1]

    def duplicates(self) -> int:
        """Answers marked duplicate (to a re-send, or to a redelivery of a command already answered)."""
        with self._lock:
            return sum(1 for c in self.sent for r in self.arrivals.replies[c] if r["duplicate"])

    def double_side_effects(self) -> list[str]:
        with self._lock:
            return [c for c, ids in self.arrivals.events.items() if len(ids) > 1]

    def events_of(self, command_id: str) -> int:
        with self._lock:
            return len(self.arrivals.events.get(command_id, ()))

    def result(self, command_id: str) -> dict:
        return self.originals(command_id)[0]

    def statuses(self) -> Counter:
        return Counter(self.result(c)["status"] for c in self.sent if self.originals(c))

    def resumed_after(self, moment: float) -> float | None:
        """How long the fault held results up: the longest silence between two results of one host
        from the last result before `moment` on, over both hosts (None: no result came after it)."""
        by_host: dict[str, list[float]] = defaultdict(list)
        with self._lock:
            for at, command_id in self.arrivals.first_results:
                if command_id in self.sent:
                    by_host[self.sent[command_id][0]].append(at)
        longest = None
        for times in by_host.values():
            before = [at for at in times if at < moment]
            after = sorted(at for at in times if at >= moment)
            if not after:
                return None
            points = before[-1:] + after
            gap = max(b - a for a, b in zip([moment] + points, points, strict=False))
            longest = gap if longest is None else max(longest, gap)
        return longest

    def close(self, delete_queues: bool = True) -> None:
        self._stop.set()
        self._reader.join(timeout=10)
        if delete_queues:
            self.delete_queues()
        self._drop_connection()

    def delete_queues(self) -> None:
        def delete(channel):
            for name in self.queues.values():
                channel.queue_delete(name)
        try:
            self._retrying(delete, timeout=20)
        except CONNECTION_TROUBLE:
            pass
        self._drop_connection()
