"""`storage-worker doctor` (CONTRACT §7): checks broker, libvirt, state dir; says what to fix.

Each check is a small function of a `Context` that returns one `Check`: a name, a status (ok, warn,
fail, or skip when what it needs failed earlier), a sentence, and for warn/fail a fix. The checks
read or create only throwaway things: broker objects named `<prefix>.doctor-<random>` (deleted
again), a temporary file in STATE_DIR (and STATE_DIR itself when it is missing, removed again).
Existing exchanges and queues are re-declared with the arguments the worker would use, which the
broker treats as a no-op when they match and refuses with 406 PRECONDITION_FAILED when they do not.

The AMQP password is never printed: URLs are shown masked and error texts are scrubbed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sqlite3
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

# The journal's file name in STATE_DIR (worker.app.JOURNAL_FILE; not imported: that module pulls in
# the whole worker). tests/unit/test_doctor.py checks the two agree.
JOURNAL_FILE = "journal.sqlite3"
BROKER_TIMEOUT = 5.0
LIBVIRT_TIMEOUT = 15.0
START_SERVICES = "scripts/dev-services"


class Status(str, Enum):
    ok = "ok"
    warn = "warn"
    fail = "fail"
    skip = "skip"


_LABELS = {Status.ok: "ok", Status.warn: "WARN", Status.fail: "FAIL", Status.skip: "skip"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.ok, detail)


def warn(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, Status.warn, detail, fix)


def fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, Status.fail, detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, Status.skip, detail)


# --- presentation ---------------------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The URL with its password replaced by ***: amqp://guest:***@localhost:5672/%2F."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    masked = f"{user}:***@{hostinfo}" if sep else parts.netloc
    return urlunsplit(parts._replace(netloc=masked))


def url_secrets(url: str) -> list[str]:
    """The URL's password as written and decoded, for `scrub`; none when it equals the user name
    (guest/guest is no secret, and scrubbing it would hide the user name too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if not parts.password:
        return []
    decoded = unquote(parts.password)
    if decoded == unquote(parts.username or ""):
        return []
    return sorted({decoded, parts.password}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def format_line(check: Check, width: int = 13) -> str:
    line = f"{_LABELS[check.status]:<4} {check.name:<{width}} {check.detail}"
    if check.fix and check.status in (Status.warn, Status.fail):
        line += f" → fix: {check.fix}"
    return line


def format_report(checks: list[Check]) -> str:
    width = max([13, *(len(c.name) for c in checks)])
    return "\n".join(format_line(c, width) for c in checks)


def format_json(checks: list[Check]) -> str:
    return json.dumps({"ok": exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]}, indent=2)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == Status.fail for c in checks) else 0


# --- context --------------------------------------------------------------------------------------

@dataclass
class Context:
    """What the checks share: the settings, and the connections earlier checks opened."""

    settings: Any
    broker: Any = None            # pika.BlockingConnection once the broker check succeeded
    broker_parameters: Any = None
    libvirt: Any = None           # libvirt.virConnect once the libvirt check succeeded
    state_dir_ok: bool = True     # false once the state_dir check failed
    secrets: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.amqp_url.get_secret_value()

    @property
    def shown_url(self) -> str:
        return mask_url(self.url)

    def clean(self, text: Any) -> str:
        return scrub(str(text), self.secrets)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
        self.cleanups.clear()


# --- broker ---------------------------------------------------------------------------------------

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
    import pika

    name = "broker"
    where = ctx.shown_url
    try:
        parameters = _broker_parameters(ctx.settings, ctx.url)
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
                      f"{_set_permissions(vhost, user, ctx.settings.prefix)}"),
            "protocol": (f"{where}: {host} answers but not as an AMQP 0-9-1 broker (wrong port, or a TLS port "
                         f"with amqp://): {detail}",
                         "point STORAGE_WORKER_AMQP_URL at RabbitMQ's AMQP port (5672, or 5671 with amqps://)"),
            "other": (f"{where}: cannot connect: {type(error).__name__}: {detail}",
                      f"check that RabbitMQ runs ({START_SERVICES}) and STORAGE_WORKER_AMQP_URL"),
        }
        text, fix = messages[kind]
        return fail(name, text, fix)
    ctx.broker = connection
    ctx.broker_parameters = parameters
    ctx.cleanups.append(lambda: connection.close() if connection.is_open else None)
    props = getattr(getattr(connection, "_impl", None), "server_properties", None) or {}
    product = _text(props.get("product")) or "broker"
    version = _text(props.get("version"))
    return ok(name, f"{where} reachable ({product}{' ' + version if version else ''})")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _set_permissions(vhost: str, user: str, prefix: str) -> str:
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


def _attempt(ctx: Context, action: Callable[[Any], Any]) -> tuple[bool, int | None, str, Any]:
    """Run `action(channel)` on a fresh channel: (succeeded, reply code, reply text, value)."""
    import pika.exceptions as pe

    try:
        with _channel(ctx) as channel:
            return True, None, "", action(channel)
    except (pe.ChannelClosed, pe.AMQPChannelError) as error:
        code, text = _broker_reply(error)
        return False, code, text, None


_REFUSED = re.compile(r"access to (exchange|queue) '([^']*)' in vhost")


def check_permissions(ctx: Context) -> Check:
    """configure, write and read on names under the prefix, and write on amq.default (replies),
    tried on a throwaway exchange and exclusive queue named <prefix>.doctor-<random>."""
    name = "permissions"
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    params = ctx.broker_parameters
    user, vhost, prefix = params.credentials.username, params.virtual_host, ctx.settings.prefix
    scratch = f"{prefix}.doctor-{uuid.uuid4().hex[:10]}"
    refused: list[str] = []
    untested: list[str] = []

    def note(action: str, result: tuple, exchange: str = "", queue: str = "") -> bool:
        """Record a refusal; `exchange`/`queue` say which permission the action needs on each kind
        of resource (the broker's text names the resource it refused)."""
        succeeded, code, text = result[:3]
        if not succeeded:
            refused_resource = _REFUSED.search(text or "")
            if code == 403 and refused_resource:
                kind, resource = refused_resource.group(1), refused_resource.group(2)
                permission = exchange if kind == "exchange" else queue
                refused.append(f"{permission} on {kind} {resource!r} ({action})")
            else:
                refused.append(f"{action} ({code} {text})")
        return succeeded

    exchange_ok = note("declare an exchange", _attempt(
        ctx, lambda ch: ch.exchange_declare(scratch, exchange_type="fanout", durable=False, auto_delete=True)),
        exchange="configure")
    if exchange_ok:
        ctx.cleanups.append(lambda: _delete_exchange(ctx, scratch))
    # An exclusive queue lives on the doctor's connection; it goes away when the connection closes.
    queue_ok = note("declare a queue", _attempt(
        ctx, lambda ch: ch.queue_declare(scratch, exclusive=True, auto_delete=True)), queue="configure")
    if queue_ok:
        ctx.cleanups.append(lambda: _delete_queue(ctx, scratch))
    if exchange_ok and queue_ok:
        note("bind a queue to an exchange", _attempt(
            ctx, lambda ch: ch.queue_bind(scratch, scratch, routing_key="")), exchange="read", queue="write")
    else:
        untested.append("binding")
    if exchange_ok:
        note("publish results and events", _attempt(ctx, lambda ch: _publish(ch, scratch, "")), exchange="write")
    else:
        untested.append("publishing to the prefix's exchanges")
    if queue_ok:
        note("publish results to reply_to queues", _attempt(ctx, lambda ch: _publish(ch, "", scratch)),
             exchange="write")
        note("consume commands", _attempt(ctx, lambda ch: ch.basic_get(scratch, auto_ack=True)), queue="read")
    else:
        untested.append("reading a queue")
    if refused:
        detail = f"user {user!r} on vhost {vhost!r} is refused: {'; '.join(refused)}"
        if untested:
            detail += f" (so not tested: {', '.join(untested)})"
        return fail(name, ctx.clean(detail), _set_permissions(vhost, user, prefix))
    return ok(name, f"user {user!r} may configure, write and read {prefix}.* on vhost {vhost!r} "
                    f"and publish replies via amq.default")


def _publish(channel: Any, exchange: str, routing_key: str) -> None:
    import pika

    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, b"storage-worker doctor",
                          pika.BasicProperties(content_type="text/plain", expiration="1000"))


def _delete_exchange(ctx: Context, name: str) -> None:
    if ctx.broker is not None and ctx.broker.is_open:
        _attempt(ctx, lambda ch: ch.exchange_delete(name))


def _delete_queue(ctx: Context, name: str) -> None:
    if ctx.broker is not None and ctx.broker.is_open:
        _attempt(ctx, lambda ch: ch.queue_delete(name))


def check_exchanges(ctx: Context) -> Check:
    name = "exchanges"
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    topology = ctx.settings.topology
    expected = [(topology.commands_exchange, "direct"), (topology.results_exchange, "topic"),
                (topology.events_exchange, "topic"), (topology.dead_letter_exchange, "topic")]
    missing, different, unverified = [], [], []
    for exchange, kind in expected:
        exists, code, text, _ = _attempt(ctx, lambda ch: ch.exchange_declare(exchange, passive=True))
        if not exists:
            if code == 404:
                missing.append(exchange)
                continue
            return fail(name, ctx.clean(f"cannot look up exchange {exchange!r}: {code} {text}"))
        same, code, text, _ = _attempt(ctx, lambda ch: ch.exchange_declare(exchange, exchange_type=kind,
                                                                           durable=True))
        if same:
            continue
        if code == 406:
            different.append(f"{exchange!r} ({text})")
        else:
            unverified.append(exchange)
    if different:
        vhost = ctx.broker_parameters.virtual_host
        return fail(name, ctx.clean(f"exists with another type or durability: {'; '.join(different)}; the "
                                    f"worker needs durable {', '.join(f'{e} ({k})' for e, k in expected)}"),
                    f"delete it (rabbitmqadmin -V {shlex.quote(vhost)} delete exchange name=<name>, or the "
                    f"management UI) so the worker re-creates it, or choose another STORAGE_WORKER_PREFIX")
    verified = [e for e, _ in expected if e not in missing and e not in unverified]
    notes = []
    if verified:
        notes.append(f"{', '.join(verified)} exist with the expected types")
    if missing:
        notes.append(f"not declared yet: {', '.join(missing)} (the worker declares them at start)")
    if unverified:
        notes.append(f"exist, type not verified (no configure permission): {', '.join(unverified)}")
    if missing:
        return warn(name, "; ".join(notes))
    if unverified:
        return warn(name, "; ".join(notes), "see the permissions check")
    return ok(name, "; ".join(notes))


def _queue_check(ctx: Context, name: str, queue: str, arguments: dict[str, Any]) -> Check:
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    exists, code, text, frame = _attempt(ctx, lambda ch: ch.queue_declare(queue, passive=True))
    if not exists:
        if code == 404:
            return warn(name, f"{queue} does not exist yet (the worker creates it at start with "
                              f"{_arguments_text(arguments)})")
        if code == 405:
            return warn(name, ctx.clean(f"{queue} is exclusively owned by another connection: {text}"),
                        "stop whatever declared it exclusive; the worker's queue must be shared")
        return fail(name, ctx.clean(f"cannot look up {queue}: {code} {text}"))
    messages = frame.method.message_count
    counts = f"{messages} message(s), {frame.method.consumer_count} consumer(s)"
    differences, complete, code, text = queue_differences(ctx, queue, arguments)
    if complete and not differences:
        return ok(name, f"{queue} exists with the expected arguments ({_arguments_text(arguments)}); {counts}")
    if differences:
        listed = "; ".join(_difference_text(d) for d in differences)
        more = "" if complete else " (and perhaps more)"
        return fail(name, ctx.clean(f"{queue} exists with other arguments than the worker declares: {listed}{more}; "
                                    f"{counts}"),
                    queue_fix(queue, ctx.broker_parameters.virtual_host, differences, complete, messages))
    if code == 403:
        return warn(name, f"{queue} exists ({counts}); its arguments could not be verified: no configure "
                          f"permission", "see the permissions check")
    return fail(name, ctx.clean(f"{queue} exists but re-declaring it with the worker's arguments failed: "
                                f"{code} {text}"))


def _arguments_text(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_shown(value)}" for key, value in arguments.items())


class _Absent:
    def __repr__(self) -> str:
        return "none"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Difference:
    """One argument (or property) of an existing queue that differs from what the worker declares."""

    argument: str
    wanted: Any     # ABSENT: the worker does not set it
    current: Any    # ABSENT: the queue does not have it


def _shown(value: Any) -> str:
    if value is ABSENT:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _difference_text(d: Difference) -> str:
    current = _shown(d.current)
    if d.argument == "x-queue-type" and d.current is ABSENT:
        current = "none (a classic queue)"
    return f"{d.argument} is {current}, the worker wants {_shown(d.wanted)}"


# RabbitMQ's PRECONDITION_FAILED text names the first argument that differs and, in one of three
# forms, the existing value: "... but current is none", "... but current is the value 'quorum' of
# type 'longstr'", or (same type on both sides) "received 'false' but current is 'true'".
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue .*: received .* but current is "
    r"(?:(?P<none>none)|the value '(?P<value>[^']*)' of type '(?P<type>[^']*)'|'(?P<same>[^']*)')\s*$")
_INTEGER_TYPES = {"signedint", "long", "short", "byte", "unsignedint", "unsignedshort", "unsignedbyte",
                  "long_uint", "long_int"}


def parse_inequivalent(text: str, sent: Any) -> tuple[str, Any] | None:
    """(argument, existing value or ABSENT) from a 406 reply text; `sent` is what the probe declared
    for that argument (it gives the type of a same-type answer). None when the text is not understood."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    argument = match.group("arg")
    if match.group("none"):
        return argument, ABSENT
    if match.group("type") is not None:
        raw, kind = match.group("value"), match.group("type")
        if kind == "longstr":
            return argument, raw
        if kind == "bool":
            return argument, raw == "true"
        if kind in _INTEGER_TYPES:
            try:
                return argument, int(raw)
            except ValueError:
                return None
        return None
    raw = match.group("same")
    if isinstance(sent, bool):
        return argument, raw == "true"
    if isinstance(sent, int):
        try:
            return argument, int(raw)
        except ValueError:
            return None
    return argument, raw


def queue_differences(ctx: Context, queue: str, arguments: dict[str, Any],
                      limit: int = 12) -> tuple[list[Difference], bool, int | None, str]:
    """Every argument of the existing `queue` that differs from `arguments`.

    AMQP 0-9-1 cannot read a queue's arguments. A declaration with the expected ones is a no-op when
    they match and is refused with 406 PRECONDITION_FAILED naming the first one that differs; the
    probe then adopts the queue's value for it and declares again, until the broker accepts (the
    list is complete) or answers something else. Returns (differences, complete, first reply code,
    first reply text). The queue exists (checked just before), so an accepted probe changes nothing.
    """
    probe = dict(arguments)
    differences: list[Difference] = []
    first: tuple[int | None, str] | None = None
    for _ in range(limit):
        accepted, code, text, _ = _attempt(
            ctx, lambda ch: ch.queue_declare(queue, durable=True, arguments=dict(probe) or None))
        if first is None:
            first = (code, text)
        if accepted:
            return differences, True, *first
        if code != 406:
            break
        parsed = parse_inequivalent(text, probe.get(_argument_of(text), None))
        if parsed is None:
            break
        argument, current = parsed
        if any(d.argument == argument for d in differences):
            break  # no progress: the broker does not take the value back as it reported it
        if argument in ("durable", "exclusive", "auto_delete"):
            differences.append(Difference(argument, True if argument == "durable" else False, current))
            break
        differences.append(Difference(argument, arguments.get(argument, ABSENT), current))
        if current is ABSENT:
            probe.pop(argument, None)
        else:
            probe[argument] = current
    assert first is not None
    return differences, False, *first


def _argument_of(text: str) -> str:
    match = re.search(r"inequivalent arg '([^']+)'", text)
    return match.group(1) if match else ""


# Queue arguments the worker's settings decide, and the setting value that reproduces a given one.
def _setting_for(d: Difference) -> str | None:
    if d.argument == "x-queue-type":
        return f"STORAGE_WORKER_QUEUE_TYPE={'classic' if d.current is ABSENT else d.current}"
    if d.argument == "x-delivery-limit" and isinstance(d.current, int) and d.current >= 1:
        return f"STORAGE_WORKER_DELIVERY_LIMIT={d.current}"
    if d.argument == "x-single-active-consumer":
        return f"STORAGE_WORKER_SINGLE_ACTIVE_CONSUMER={'true' if d.current is True else 'false'}"
    return None


def queue_fix(queue: str, vhost: str, differences: list[Difference], complete: bool, messages: int) -> str:
    delete = f"rabbitmqctl delete_queue -p {shlex.quote(vhost)} {shlex.quote(queue)}"
    loss = f" (it holds {messages} message(s): move them first or they are lost)" if messages else ""
    fix = f"delete it ({delete}){loss} and let the worker re-create it"
    settings = [_setting_for(d) for d in differences]
    if complete and settings and all(settings):
        fix += f", or make the worker declare what exists: {' '.join(settings)}"  # type: ignore[arg-type]
    elif any(d.argument == "x-queue-type" for d in differences):
        queue_type = next(s for d, s in zip(differences, settings) if d.argument == "x-queue-type")
        others = ", ".join(d.argument for d, s in zip(differences, settings) if s is None)
        if others:
            fix += f" ({queue_type} would match its type, but no setting matches its {others})"
        else:
            fix += f" ({queue_type} would match its type; other arguments may differ too)"
    return fix


def check_command_queue(ctx: Context) -> Check:
    from worker.transport.topology import command_queue_arguments

    settings = ctx.settings
    arguments = command_queue_arguments(settings.topology, settings.queue_type, settings.delivery_limit,
                                        settings.single_active_consumer)
    return _queue_check(ctx, "command_queue", settings.topology.command_queue, arguments)


def check_dead_queue(ctx: Context) -> Check:
    settings = ctx.settings
    return _queue_check(ctx, "dead_queue", settings.topology.dead_letter_queue,
                        {"x-queue-type": settings.queue_type})


# --- libvirt --------------------------------------------------------------------------------------

def _open_libvirt(uri: str, timeout: float):
    """libvirt.open on a helper thread, so an unanswering remote URI cannot hang the doctor."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["conn"] = libvirt.open(uri)
        except libvirt.libvirtError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="doctor-libvirt", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["conn"]


def libvirt_fix(uri: str, message: str) -> str:
    lowered = message.lower()
    if "no such file or directory" in lowered or "connection refused" in lowered:
        return (f"start libvirtd ({START_SERVICES}; or install libvirt-daemon-system and run libvirtd -d), or "
                f"set STORAGE_WORKER_LIBVIRT_URI")
    if "permission denied" in lowered or "authentication" in lowered or "access denied" in lowered \
            or "polkit" in lowered:
        return ("run the worker as root or as a member of the libvirt group (the socket "
                "/var/run/libvirt/libvirt-sock must be writable), or fix the URI's credentials")
    if "no connection driver" in lowered or "driver" in lowered and "not" in lowered:
        return f"install the libvirt driver for {uri!r} (e.g. libvirt-daemon-system), or fix STORAGE_WORKER_LIBVIRT_URI"
    return f"check that libvirtd runs ({START_SERVICES}) and that STORAGE_WORKER_LIBVIRT_URI is right"


def check_libvirt(ctx: Context) -> Check:
    name = "libvirt"
    uri = ctx.settings.libvirt_uri
    try:
        import libvirt
    except ImportError as error:
        return fail(name, f"libvirt-python cannot be imported: {error}",
                    "install libvirt-dev and pkg-config, then reinstall the project (pip install -e .)")
    from worker.virt.describe import libvirt_version

    try:
        conn = _open_libvirt(uri, LIBVIRT_TIMEOUT)
    except TimeoutError as error:
        return fail(name, f"{uri}: {error}", libvirt_fix(uri, ""))
    except libvirt.libvirtError as error:
        message = error.get_error_message() or str(error)
        return fail(name, f"{uri}: cannot connect: {message}", libvirt_fix(uri, message))
    ctx.libvirt = conn
    ctx.cleanups.append(conn.close)
    try:
        daemon = libvirt_version(conn.getLibVersion())
        driver = conn.getType()
        hypervisor = conn.getVersion()
    except libvirt.libvirtError as error:
        return warn(name, f"{uri}: connected, but cannot read versions: {error.get_error_message()}")
    hv = f", {driver} {libvirt_version(hypervisor)}" if hypervisor else f", driver {driver}"
    return ok(name, f"{uri} connected (libvirt {daemon}{hv}; client library "
                    f"{libvirt_version(libvirt.getVersion())})")


def check_pool_types(ctx: Context) -> Check:
    name = "pool_types"
    if ctx.libvirt is None:
        return skip(name, "not checked: libvirt is unreachable")
    import libvirt

    from worker.virt.describe import supported_pool_types

    try:
        types = supported_pool_types(ctx.libvirt)
    except libvirt.libvirtError as error:
        return warn(name, f"the storage pool capabilities cannot be read: {error.get_error_message()}",
                    "libvirt 5.2 or newer reports them (virConnectGetStoragePoolCapabilities)")
    if not types:
        return warn(name, "libvirt reports no supported storage pool type",
                    "install libvirt's storage drivers (libvirt-daemon-driver-storage*) and restart libvirtd")
    if "dir" not in types:
        return warn(name, f"supported: {', '.join(types)}; 'dir' is missing, so directory pools cannot be used",
                    "install libvirt-daemon-driver-storage (Debian: part of libvirt-daemon-system) and "
                    "restart libvirtd")
    return ok(name, f"supported: {', '.join(types)}")


# --- local state ----------------------------------------------------------------------------------

def check_state_dir(ctx: Context) -> Check:
    name = "state_dir"
    state_dir = Path(ctx.settings.state_dir)
    fix = (f"create {state_dir} writable by the worker's user (mkdir -p {shlex.quote(str(state_dir))}), or set "
           f"STORAGE_WORKER_STATE_DIR to a writable directory")
    created: list[Path] = []
    try:
        if state_dir.exists() and not state_dir.is_dir():
            ctx.state_dir_ok = False
            return fail(name, f"{state_dir} exists but is not a directory", fix)
        missing = [p for p in [state_dir, *state_dir.parents] if not p.exists()]
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        handle, probe = tempfile.mkstemp(prefix=".doctor-", dir=state_dir)
        try:
            os.write(handle, b"storage-worker doctor\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        ctx.state_dir_ok = False
        reason = error.strerror or str(error)
        where = error.filename or state_dir
        return fail(name, f"{state_dir} is not usable: {reason}: {where}", fix)
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass
    if created:
        return ok(name, f"{state_dir} does not exist yet and can be created (the worker creates it at start)")
    return ok(name, f"{state_dir} is writable")


def check_journal(ctx: Context) -> Check:
    name = "journal"
    path = Path(ctx.settings.state_dir) / JOURNAL_FILE
    if not ctx.state_dir_ok:
        return skip(name, "not checked: STATE_DIR is not usable")
    if not path.exists():
        return ok(name, f"no journal yet at {path} (the worker creates it at start)")
    if not path.is_file():
        return fail(name, f"{path} is not a file", f"move {path} away; the worker creates a new journal")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            commands = db.execute("SELECT count(*) FROM commands").fetchone()[0] if "commands" in tables else None
        finally:
            db.close()
    except sqlite3.Error as error:
        return fail(name, f"{path} is not a readable SQLite database: {error}",
                    f"move {path} away (the worker then starts a new journal, forgetting which command ids "
                    f"it has answered), or restore it from a backup")
    size = path.stat().st_size
    if commands is None:
        return warn(name, f"{path} is an SQLite database without the journal's tables ({', '.join(sorted(tables)) or 'none'})",
                    "make sure STATE_DIR is the worker's own directory; the worker adds its tables at start")
    return ok(name, f"{path} readable: {commands} command(s), {size / 2**20:.1f} MiB")


def check_allowed_roots(ctx: Context) -> Check:
    name = "allowed_roots"
    roots = [Path(r) for r in ctx.settings.allowed_roots]
    if not roots:
        return warn(name, "ALLOWED_ROOTS is empty: no pool target, upload source or download destination is allowed",
                    "set STORAGE_WORKER_ALLOWED_ROOTS, e.g. '[\"/var/lib/libvirt/images\"]'")
    missing = [str(r) for r in roots if not r.exists()]
    not_dirs = [str(r) for r in roots if r.exists() and not r.is_dir()]
    if missing or not_dirs:
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if not_dirs:
            problems.append(f"not directories: {', '.join(not_dirs)}")
        return warn(name, "; ".join(problems),
                    f"create them (mkdir -p {' '.join(shlex.quote(m) for m in missing or not_dirs)}) or fix "
                    f"STORAGE_WORKER_ALLOWED_ROOTS")
    return ok(name, ", ".join(str(r) for r in roots))


def check_policy(ctx: Context) -> Check:
    from worker.intake.policy import Policy, PolicyError

    name = "policy"
    path = ctx.settings.policy_file
    if path is None:
        return ok(name, "no POLICY_FILE: every broker user may run every command")
    try:
        policy = Policy.load(path)
    except PolicyError as error:
        return fail(name, str(error), "fix the file, or unset STORAGE_WORKER_POLICY_FILE")
    return ok(name, f"{path}: {policy.summary()}")


CHECKS: list[Callable[[Context], Check]] = [
    check_broker, check_permissions, check_exchanges, check_command_queue, check_dead_queue,
    check_libvirt, check_pool_types, check_state_dir, check_journal, check_allowed_roots, check_policy,
]


def run_checks(settings: Any, checks: list[Callable[[Context], Check]] | None = None) -> list[Check]:
    ctx = Context(settings=settings)
    ctx.secrets.extend(url_secrets(ctx.url))
    results: list[Check] = []
    try:
        for check in checks or CHECKS:
            try:
                results.append(check(ctx))
            except Exception as error:  # noqa: BLE001 - a broken check must not hide the others
                name = check.__name__.removeprefix("check_")
                results.append(fail(name, ctx.clean(f"the check itself failed: {type(error).__name__}: {error}")))
    finally:
        ctx.close()
    return results


def load_checked_settings(flags: dict[str, Any], config_file: str | None) -> tuple[Any, Check | None]:
    """The settings, or a failed 'settings' check saying what is wrong with them."""
    from pydantic import ValidationError

    from messages.errors import describe
    from worker.config import load_settings

    try:
        return load_settings(flags, config_file), None
    except FileNotFoundError as error:
        return None, fail("settings", str(error), "give an existing file to --config or STORAGE_WORKER_CONFIG")
    except ValidationError as error:
        urls = [(flags or {}).get("amqp_url"), os.environ.get("STORAGE_WORKER_AMQP_URL")]
        text = scrub(describe(error), [s for url in urls if isinstance(url, str) for s in url_secrets(url)])
        return None, fail("settings", text, "fix the flag, STORAGE_WORKER_* variable or config file entry named")
    except (OSError, ValueError) as error:
        return None, fail("settings", str(error), "fix the config file")


def doctor(flags: dict[str, Any], config_file: str | None, as_json: bool = False, out=None) -> int:
    """Run every check, print the report, return the exit code (0: nothing failed)."""
    import sys

    out = out or sys.stdout
    settings, problem = load_checked_settings(flags, config_file)
    checks = [problem] if problem is not None else run_checks(settings)
    text = format_json(checks) if as_json else format_report(checks)
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = text.replace("→", "->")
    print(text, file=out, flush=True)
    return exit_code(checks)
