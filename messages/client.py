"""A small blocking client for control planes: send a command, wait for its result.

    with StorageClient("amqp://guest:guest@localhost:5672/%2F", host_id="kvm-01") as client:
        result = client.call("volume.create", {"pool": "images", "name": "vm1.qcow2",
                                               "capacity": 10 * 2**30, "format": "qcow2"})
        print(result.status, result.result)

Replies come over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`), so no queue is declared.
`amqp_url` may name several nodes of a cluster (messages.brokers): the client connects to one, and
when that connection is lost during a call it connects to another and sends the command again
under the same id — the worker runs it at most once and answers a repeat from its journal.
For monitoring, `follow_events` yields events, live or replayed from the event stream
(`messages.stream` says how), and `on_events`/`on_results` with `pump` read events and results side
by side. This is the only module of `messages` that imports pika.
"""

from __future__ import annotations

import os
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pika
from pika.exceptions import (AMQPConnectionError, ChannelClosedByBroker, ChannelWrongStateError, NackError,
                             UnroutableError)
from pydantic import ValidationError

from messages.brokers import broker_urls, shuffled
from messages.command import encode
from messages.events import CloudEvent, JobProgressData
from messages.results import Result
from messages.stream import OFFSET_HEADER, Gap, Start, StreamFilter, consumer_arguments, since_time
from messages.topology import Topology

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# What losing the broker connection (or the node it went to) looks like to a blocking client.
CONNECTION_LOST = (AMQPConnectionError, ChannelWrongStateError)
NACK_RETRY = 0.1  # seconds before a nacked command is sent again
STREAM_PREFETCH = 1000  # a stream consumer needs one (basic.qos); acks only return credit


class NoWorker(RuntimeError):
    """No command queue is bound for the host id: no worker for that host has ever started."""


class CallTimeout(TimeoutError):
    pass


class NoEventStream(RuntimeError):
    """The event stream queue does not exist: no worker of this prefix that declares it has started."""


class StorageClient:
    def __init__(self, amqp_url: str | list[str] = "amqp://guest:guest@localhost:5672/%2F", *, host_id: str = "",
                 prefix: str = "storage", ca_file: str | os.PathLike[str] | None = None,
                 cert_file: str | os.PathLike[str] | None = None,
                 key_file: str | os.PathLike[str] | None = None):
        """`host_id` names the worker commands go to; following events needs none. `amqp_url`: one
        node, several separated by ';', or a list (messages.brokers).

        With an amqps:// URL the broker's certificate is verified against `ca_file` (the system's
        CAs when None) and its name against the URL's host; `cert_file` (with `key_file`, unless the
        key is in the same file) is a client certificate for brokers that ask for one. The three
        are ignored with a plain amqp:// URL."""
        self.topology = Topology(prefix=prefix, host=host_id)
        self._nodes = [_parameters(url, ca_file, cert_file, key_file) for url in shuffled(broker_urls(amqp_url))]
        self._replies: dict[str, Result] = {}
        self._awaited: set[str] = set()
        self._connect()

    def _connect(self) -> None:
        """Connect to the first node that answers (the next ones first after a loss) and listen for
        replies on it."""
        self._connection = pika.BlockingConnection(self._nodes)
        self._nodes = self._nodes[1:] + self._nodes[:1]
        self._open_channel()

    def _open_channel(self) -> None:
        """The channel commands go out on, in confirm mode, with the direct reply-to consumer (a
        reply comes back on the channel that published the command)."""
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)

    def _replace_channel(self) -> None:
        """A channel whose publish was nacked: RabbitMQ 3.10 may go on nacking every publish of a
        channel that published to a quorum queue without a leader (an election under way)."""
        if self._channel.is_open:
            self._channel.close()
        self._open_channel()

    def __enter__(self) -> "StorageClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def _on_reply(self, _channel: Any, _method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        # The first answer counts; a later duplicate of it (a redelivered command) is dropped.
        correlation_id = properties.correlation_id
        if correlation_id in self._awaited and correlation_id not in self._replies:
            self._replies[correlation_id] = Result.model_validate_json(body)

    def submit(self, op: str, args: dict[str, Any] | None = None, *, command_id: str | None = None,
               deadline: datetime | None = None, reply_to: str | None = None,
               correlation_id: str | None = None, body: bytes | None = None) -> str:
        """Publish a command (confirmed by the broker) and return its id; replies go to `reply_to`."""
        if not self.topology.host:
            raise ValueError("a host_id is needed to send commands")
        command_id = command_id or str(uuid.uuid4())
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                          reply_to=reply_to, correlation_id=correlation_id or command_id,
                                          message_id=command_id)
        try:
            self._channel.basic_publish(self.topology.commands_exchange, self.topology.command_routing_key,
                                        body if body is not None else encode(command_id, op, args, deadline),
                                        properties, mandatory=True)
        except ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            raise NoWorker(f"exchange {self.topology.commands_exchange!r} does not exist: no worker with prefix "
                           f"{self.topology.prefix!r} has started on this broker") from None
        except UnroutableError:
            raise NoWorker(f"no worker queue is bound for host {self.topology.host!r} on exchange "
                           f"{self.topology.commands_exchange!r}; is a worker with that host id running?") from None
        return command_id

    def call(self, op: str, args: dict[str, Any] | None = None, *, command_id: str | None = None,
             deadline: datetime | None = None, timeout: float = 60.0,
             on_progress: Callable[[JobProgressData], None] | None = None) -> Result:
        """Send a command and wait for its result; raises CallTimeout after `timeout` seconds.
        `on_progress` receives the command's storage.job.progress events while it runs. A lost
        connection is replaced (another node of the cluster) and the command sent again under the
        same id; the answer may then be its stored result, marked duplicate. A command the broker
        nacks (its queue is electing a leader) is sent again on a new channel."""
        command_id = command_id or str(uuid.uuid4())
        correlation_id = str(uuid.uuid4())
        end = time.monotonic() + timeout
        while True:
            self._awaited.add(correlation_id)
            progress_channel = self._follow_progress(command_id, on_progress) if on_progress else None
            try:
                self.submit(op, args, command_id=command_id, deadline=deadline, reply_to=DIRECT_REPLY_TO,
                            correlation_id=correlation_id)
                return self.wait(correlation_id, max(0.0, end - time.monotonic()), what=f"{op} {command_id}")
            except NackError:
                if time.monotonic() >= end:
                    raise CallTimeout(f"no result for {op} {command_id} within {timeout} s: the broker "
                                      f"kept refusing the command (nack)") from None
                time.sleep(NACK_RETRY)
                try:
                    self._replace_channel()
                except CONNECTION_LOST:
                    self._reconnect(end)
            except CONNECTION_LOST:
                if time.monotonic() >= end:
                    raise CallTimeout(f"no result for {op} {command_id} within {timeout} s: the broker "
                                      f"connection was lost") from None
                self._reconnect(end)
            finally:
                if progress_channel is not None and progress_channel.is_open:
                    progress_channel.close()

    def _reconnect(self, end: float) -> None:
        """Connect again (to another node first), retrying until `end`."""
        while True:
            try:
                self._connect()
                return
            except AMQPConnectionError:
                if time.monotonic() >= end:
                    raise
                time.sleep(0.5)

    def _follow_progress(self, command_id: str, on_progress: Callable[[JobProgressData], None]) -> Any:
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, self.topology.events_exchange, f"{self.topology.host}.job.progress")

        def deliver(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
            event = CloudEvent.model_validate_json(body)
            if event.commandid == command_id:
                on_progress(JobProgressData.model_validate(event.data))

        channel.basic_consume(queue, deliver, auto_ack=True)
        return channel

    def wait(self, correlation_id: str, timeout: float, what: str = "the command") -> Result:
        self._awaited.add(correlation_id)
        end = time.monotonic() + timeout
        try:
            while correlation_id not in self._replies:
                left = end - time.monotonic()
                if left <= 0:
                    raise CallTimeout(f"no result for {what} within {timeout} s")
                self._connection.process_data_events(time_limit=min(left, 0.5))
            return self._replies.pop(correlation_id)
        finally:
            self._awaited.discard(correlation_id)

    # ---- monitoring: events (live or from the stream) and results ------------------------------

    def follow_events(self, pattern: str = "#", *, since: datetime | timedelta | str | None = None,
                      offset: Start | None = None, idle_timeout: float | None = None,
                      on_gap: Callable[[Gap], None] | None = None) -> Iterator[CloudEvent]:
        """Yield events whose routing key (`<host>.<suffix>`) matches the topic `pattern`, e.g.
        "kvm-01.pool.*" or "*.volume.#"; stops after `idle_timeout` seconds without one (never when
        None).

        Without `since` or `offset`: events published from now on, through a private queue bound to
        the events exchange that disappears with the client. With `since` (a datetime, a timedelta
        back from now, or text such as "10m" or "2026-12-01T10:00Z") or `offset` ("first", "last",
        "next" or a stream offset): from the event stream, starting there and going on live, each
        event once, in the order the broker received them; `on_gap` hears of events missing from a
        host's sequence."""
        pending: deque[CloudEvent] = deque()
        subscription = self.on_events(lambda event, _offset: pending.append(event), pattern, since=since,
                                      offset=offset, on_gap=on_gap)
        try:
            quiet_since = time.monotonic()
            while True:
                while pending:
                    yield pending.popleft()
                    quiet_since = time.monotonic()
                if idle_timeout is None:
                    self.pump(0.5)
                    continue
                left = quiet_since + idle_timeout - time.monotonic()
                if left <= 0:
                    return
                self.pump(min(left, 0.5))
        finally:
            subscription.close()

    def on_events(self, handler: Callable[[CloudEvent, int | None], None], pattern: str = "#", *,
                  since: datetime | timedelta | str | None = None, offset: Start | None = None,
                  on_gap: Callable[[Gap], None] | None = None) -> "Subscription":
        """Call `handler(event, stream offset or None)` for each matching event while `pump` runs;
        `pattern`, `since`, `offset` and `on_gap` as for `follow_events`. Raises NoEventStream when
        asked to replay and the stream does not exist."""
        if since is None and offset is None:
            return self._live_events(handler, pattern)
        start_time = since_time(since) if since is not None else None
        arguments = consumer_arguments(start_time, offset)
        kept = StreamFilter(pattern, start_time)
        channel = self._connection.channel()
        channel.basic_qos(prefetch_count=STREAM_PREFETCH)
        unacked = 0

        def deliver(_channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            nonlocal unacked
            unacked += 1
            if unacked >= STREAM_PREFETCH // 2:  # the stream's credit; acks remove nothing from it
                channel.basic_ack(method.delivery_tag, multiple=True)
                unacked = 0
            event = _event(body)
            if event is None:
                return
            keep, gap = kept.take(method.routing_key, event)
            if gap is not None and on_gap is not None:
                on_gap(gap)
            if keep:
                handler(event, (properties.headers or {}).get(OFFSET_HEADER))

        try:
            channel.basic_consume(self.topology.event_stream, deliver, auto_ack=False, arguments=arguments)
        except ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            raise NoEventStream(f"the event stream {self.topology.event_stream!r} does not exist: no worker with "
                                f"prefix {self.topology.prefix!r} (of a version that declares it) has started on "
                                f"this broker") from None
        return Subscription(channel)

    def _live_events(self, handler: Callable[[CloudEvent, int | None], None], pattern: str) -> "Subscription":
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, self.topology.events_exchange, pattern)

        def deliver(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
            event = _event(body)
            if event is not None:
                handler(event, None)

        channel.basic_consume(queue, deliver, auto_ack=True)
        return Subscription(channel)

    def on_results(self, handler: Callable[[Result], None], pattern: str = "#") -> "Subscription":
        """Call `handler(result)` for each result published from now on whose routing key
        (`<host>.<op>.<status>`) matches `pattern`, while `pump` runs."""
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, self.topology.results_exchange, pattern)

        def deliver(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
            try:
                result = Result.model_validate_json(body)
            except ValidationError:
                return
            handler(result)

        channel.basic_consume(queue, deliver, auto_ack=True)
        return Subscription(channel)

    def pump(self, seconds: float) -> None:
        """Deliver what arrives within `seconds` to the handlers of on_events and on_results."""
        self._connection.process_data_events(time_limit=seconds)


class Subscription:
    """A consumer of on_events or on_results; close() ends it."""

    def __init__(self, channel: Any):
        self._channel = channel

    def close(self) -> None:
        if self._channel.is_open:
            self._channel.close()


def _event(body: bytes) -> CloudEvent | None:
    """The event in a message body; None for anything else someone published there."""
    try:
        return CloudEvent.model_validate_json(body)
    except ValidationError:
        return None


def _parameters(url: str, ca_file: str | os.PathLike[str] | None, cert_file: str | os.PathLike[str] | None,
                key_file: str | os.PathLike[str] | None) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    if parameters.ssl_options is not None:  # amqps://
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parameters.host)
    return parameters
