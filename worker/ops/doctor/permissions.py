"""Whether the broker user may do what the worker does: configure, write and read names under the
prefix, and publish replies via amq.default."""

from __future__ import annotations

import re
import uuid
from typing import Any

from worker.ops.doctor.broker import attempt, set_permissions_command
from worker.ops.doctor.context import Context
from worker.ops.doctor.report import Check, fail, ok, skip

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

    exchange_ok = note("declare an exchange", attempt(
        ctx, lambda ch: ch.exchange_declare(scratch, exchange_type="fanout", durable=False, auto_delete=True)),
        exchange="configure")
    if exchange_ok:
        ctx.cleanups.append(lambda: _delete_exchange(ctx, scratch))
    # An exclusive queue lives on the doctor's connection; it goes away when the connection closes.
    queue_ok = note("declare a queue", attempt(
        ctx, lambda ch: ch.queue_declare(scratch, exclusive=True, auto_delete=True)), queue="configure")
    if queue_ok:
        ctx.cleanups.append(lambda: _delete_queue(ctx, scratch))
    if exchange_ok and queue_ok:
        note("bind a queue to an exchange", attempt(
            ctx, lambda ch: ch.queue_bind(scratch, scratch, routing_key="")), exchange="read", queue="write")
    else:
        untested.append("binding")
    if exchange_ok:
        note("publish results and events", attempt(ctx, lambda ch: _publish(ch, scratch, "")), exchange="write")
    else:
        untested.append("publishing to the prefix's exchanges")
    if queue_ok:
        note("publish results to reply_to queues", attempt(ctx, lambda ch: _publish(ch, "", scratch)),
             exchange="write")
        note("consume commands", attempt(ctx, lambda ch: ch.basic_get(scratch, auto_ack=True)), queue="read")
    else:
        untested.append("reading a queue")
    if refused:
        detail = f"user {user!r} on vhost {vhost!r} is refused: {'; '.join(refused)}"
        if untested:
            detail += f" (so not tested: {', '.join(untested)})"
        return fail(name, ctx.clean(detail), set_permissions_command(vhost, user, prefix))
    return ok(name, f"user {user!r} may configure, write and read {prefix}.* on vhost {vhost!r} "
                    f"and publish replies via amq.default")


def _publish(channel: Any, exchange: str, routing_key: str) -> None:
    import pika

    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, b"storage-worker doctor",
                          pika.BasicProperties(content_type="text/plain", expiration="1000"))


def _delete_exchange(ctx: Context, name: str) -> None:
    if ctx.broker is not None and ctx.broker.is_open:
        attempt(ctx, lambda ch: ch.exchange_delete(name))


def _delete_queue(ctx: Context, name: str) -> None:
    if ctx.broker is not None and ctx.broker.is_open:
        attempt(ctx, lambda ch: ch.queue_delete(name))
