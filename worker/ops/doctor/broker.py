"""The broker connection: opening it as the worker would, saying in words why it failed, and running
one action at a time on a fresh channel (a refused action closes only its channel)."""

from __future__ import annotations

import re
import shlex
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from messages.brokers import broker_urls
from worker.ops.doctor.context import Context
from worker.ops.doctor.masking import mask_url
from worker.ops.doctor.report import START_SERVICES, Check, fail, ok, warn

BROKER_TIMEOUT = 5.0


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and the exceptions pika wraps inside it (args, .exception, __cause__)."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        for attribute in ("exception", "__cause__", "__context__"):
            inner = getattr(current, attribute, None)
            if isinstance(inner, BaseException):
                stack.append(inner)


def classify_broker_error(error: BaseException) -> str:
    """dns, refused, timeout, tls, auth, vhost, protocol or other."""
    import pika.exceptions as pe

    causes = list(_causes(error))
    if any(isinstance(c, pe.ProbableAuthenticationError) for c in causes):
        return "auth"
    if any(isinstance(c, pe.ProbableAccessDeniedError) for c in causes):
        return "vhost"
    text = " ".join(str(c) for c in causes)
    if "ACCESS_REFUSED" in text:
        return "auth"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "dns"
    if any(isinstance(c, (ssl.SSLError, ssl.CertificateError)) for c in causes):
        return "tls"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "refused"
    if any(isinstance(c, (TimeoutError, socket.timeout)) for c in causes) or "timed out" in text.lower():
        return "timeout"
    if any(isinstance(c, pe.IncompatibleProtocolError) for c in causes):
        return "protocol"
    return "other"


def _broker_parameters(settings: Any, url: str):
    """The worker's own connection parameters (TLS included), with short timeouts and one attempt."""
    from worker.transport.parameters import connection_parameters

    parameters = connection_parameters(url, heartbeat=settings.amqp_heartbeat,
                                       ca_file=_str(settings.amqp_ca_file),
                                       cert_file=_str(settings.amqp_cert_file),
                                       key_file=_str(settings.amqp_key_file),
                                       name=f"storage-worker doctor {settings.host_id}")
    parameters.connection_attempts = 1
    parameters.retry_delay = 0
    parameters.socket_timeout = BROKER_TIMEOUT
    parameters.stack_timeout = BROKER_TIMEOUT * 2
    parameters.blocked_connection_timeout = BROKER_TIMEOUT * 2
    return parameters


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def check_broker(ctx: Context) -> Check:
    """Every node AMQP_URL names: which answer, and whether they are one cluster. The first node
    that answers is the connection the later checks use."""
    name = "broker"
    try:
        nodes = broker_urls(ctx.url)
    except ValueError as error:
        return fail(name, ctx.clean(error), "set STORAGE_WORKER_AMQP_URL to amqp://user:password@host:5672/vhost, "
                                            "or several such URLs separated by ';'")
    outcomes = [_connect(ctx, url) for url in nodes]
    reachable = [outcome for outcome in outcomes if isinstance(outcome, _Reached)]
    if not reachable:
        return outcomes[0]  # the first node's failure, in words (every node failed)
    first = reachable[0]
    ctx.broker, ctx.broker_parameters = first.connection, first.parameters
    for outcome in reachable:
        ctx.cleanups.append(lambda c=outcome.connection: c.close() if c.is_open else None)
    if len(nodes) == 1:
        return ok(name, f"{first.where} reachable ({first.product})")
    clusters = {outcome.cluster for outcome in reachable}
    shown = ", ".join(f"{outcome.where} ({outcome.cluster or 'no cluster name'})" for outcome in reachable)
    if len(clusters) > 1:
        return fail(name, f"the nodes in AMQP_URL belong to different clusters: {shown}",
                    "list only nodes of one RabbitMQ cluster in STORAGE_WORKER_AMQP_URL")
    down = [outcome for outcome in outcomes if isinstance(outcome, Check)]
    if down:
        return warn(name, f"{len(reachable)} of {len(nodes)} nodes reachable, cluster {first.cluster!r}: "
                          + "; ".join(check.detail for check in down),
                    down[0].fix or "start the nodes that do not answer, or remove them from STORAGE_WORKER_AMQP_URL")
    return ok(name, f"all {len(nodes)} nodes reachable, cluster {first.cluster!r} ({first.product})")


@dataclass
class _Reached:
    connection: Any
    parameters: Any
    where: str
    product: str
    cluster: str


def _connect(ctx: Context, url: str) -> "_Reached | Check":
    """A connection to one node, or the failed check saying in words why there is none."""
    import pika

    name = "broker"
    where = mask_url(url)
    try:
        parameters = _broker_parameters(ctx.settings, url)
    except (ValueError, OSError, ssl.SSLError) as error:
        text = ctx.clean(error)
        if "TLS" in text or "amqp_" in text:
            return fail(name, f"{where}: the TLS settings cannot be used: {text}",
                        "point STORAGE_WORKER_AMQP_CA_FILE / AMQP_CERT_FILE / AMQP_KEY_FILE at readable PEM files")
        return fail(name, f"{where} is not a usable AMQP URL: {text}",
                    "set STORAGE_WORKER_AMQP_URL to amqp://user:password@host:5672/vhost")
    host = f"{parameters.host}:{parameters.port}"
    try:
        connection = pika.BlockingConnection(parameters)
    except Exception as error:  # noqa: BLE001 - every failure is reported
        return _unreachable(ctx, error, where, host, parameters)
    props = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
    version = _text(props.get("version"))
    product = (_text(props.get("product")) or "broker") + (" " + version if version else "")
    return _Reached(connection, parameters, where, product, _text(props.get("cluster_name")))


def _unreachable(ctx: Context, error: BaseException, where: str, host: str, parameters: Any) -> Check:
    name = "broker"
    kind = classify_broker_error(error)
    detail = ctx.clean(error)
    user = parameters.credentials.username
    vhost = parameters.virtual_host
    messages = {
        "dns": (f"{where}: the host name {parameters.host!r} does not resolve (DNS): {detail}",
                "fix the host in STORAGE_WORKER_AMQP_URL (or --amqp-url)"),
        "refused": (f"{where}: connection refused at {host}: nothing listens there",
                    f"start RabbitMQ ({START_SERVICES}) or set STORAGE_WORKER_AMQP_URL to the broker's "
                    f"address"),
        "timeout": (f"{where}: no answer from {host} within {BROKER_TIMEOUT:g} s",
                    "check the address, firewalls and that RabbitMQ runs there "
                    f"({START_SERVICES}), or set STORAGE_WORKER_AMQP_URL"),
        "tls": (f"{where}: TLS handshake with {host} failed: {detail}",
                "use amqp:// for a plain port (5672) or amqps:// for the TLS port (5671); check "
                "STORAGE_WORKER_AMQP_CA_FILE and the certificate's host name"),
        "auth": (f"{where}: authentication failed: the broker refused user {user!r} with that password"
                 + (" (RabbitMQ lets 'guest' log in only over localhost)" if user == "guest" else ""),
                 f"fix the user and password in STORAGE_WORKER_AMQP_URL, or create the user: "
                 f"rabbitmqctl add_user {shlex.quote(user)} '<password>'"),
        "vhost": (f"{where}: user {user!r} may not open vhost {vhost!r} (missing vhost or no "
                  f"permissions): {detail}",
                  f"rabbitmqctl add_vhost {shlex.quote(vhost)} (if missing) and "
                  f"{set_permissions_command(vhost, user, ctx.settings.prefix)}"),
        "protocol": (f"{where}: {host} answers but not as an AMQP 0-9-1 broker (wrong port, or a TLS port "
                     f"with amqp://): {detail}",
                     "point STORAGE_WORKER_AMQP_URL at RabbitMQ's AMQP port (5672, or 5671 with amqps://)"),
        "other": (f"{where}: cannot connect: {type(error).__name__}: {detail}",
                  f"check that RabbitMQ runs ({START_SERVICES}) and STORAGE_WORKER_AMQP_URL"),
    }
    text, fix = messages[kind]
    return fail(name, text, fix)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def set_permissions_command(vhost: str, user: str, prefix: str) -> str:
    """The rabbitmqctl command that grants `user` what the worker needs: configure and read on names
    under the prefix, write there and on amq.default (replies to reply_to queues)."""
    names = f"^{re.escape(prefix)}\\."
    write = f"^({re.escape(prefix)}\\..*|amq\\.default)$"
    return (f"rabbitmqctl set_permissions -p {shlex.quote(vhost)} {shlex.quote(user)} "
            f"{shlex.quote(names)} {shlex.quote(write)} {shlex.quote(names)}")


@contextmanager
def _channel(ctx: Context):
    channel = ctx.broker.channel()
    try:
        yield channel
    finally:
        if channel.is_open:
            try:
                channel.close()
            except Exception:  # noqa: BLE001
                pass


def _broker_reply(error: BaseException) -> tuple[int | None, str]:
    """(reply code, text) of a channel the broker closed."""
    import pika.exceptions as pe

    if isinstance(error, pe.ChannelClosedByBroker):
        return error.reply_code, error.reply_text
    return None, f"{type(error).__name__}: {error}"


def attempt(ctx: Context, action: Callable[[Any], Any]) -> tuple[bool, int | None, str, Any]:
    """Run `action(channel)` on a fresh channel: (succeeded, reply code, reply text, value)."""
    import pika.exceptions as pe

    try:
        with _channel(ctx) as channel:
            return True, None, "", action(channel)
    except (pe.ChannelClosed, pe.AMQPChannelError) as error:
        code, text = _broker_reply(error)
        return False, code, text, None
