"""Whether the command queue, the dead-letter queue and the event stream exist with the arguments the
worker declares, which arguments differ when they do not, and what to do about it."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.ops.doctor.broker import attempt
from worker.ops.doctor.context import Context
from worker.ops.doctor.inequivalent import ABSENT, inequivalent_argument, parse_inequivalent
from worker.ops.doctor.report import Check, fail, ok, skip, warn
from worker.transport.topology import command_queue_arguments, dead_queue_arguments


def check_command_queue(ctx: Context) -> Check:
    settings = ctx.settings
    arguments = command_queue_arguments(settings.topology, settings.queue_type, settings.delivery_limit,
                                        settings.single_active_consumer, settings.quorum_group_size)
    return _queue_check(ctx, "command_queue", settings.topology.command_queue, arguments)


def check_dead_queue(ctx: Context) -> Check:
    settings = ctx.settings
    return _queue_check(ctx, "dead_queue", settings.topology.dead_letter_queue,
                        dead_queue_arguments(settings.queue_type, settings.quorum_group_size))


def check_event_stream(ctx: Context) -> Check:
    from worker.transport.topology import event_stream_arguments

    settings = ctx.settings
    return _queue_check(ctx, "event_stream", settings.topology.event_stream,
                        event_stream_arguments(settings.event_stream_max_age, settings.event_stream_max_bytes),
                        settings_for=stream_setting_for)


def _queue_check(ctx: Context, name: str, queue: str, arguments: dict[str, Any],
                 settings_for: Callable[[Difference], str | None] | None = None) -> Check:
    """One queue against the `arguments` the worker declares it with; the check changes nothing."""
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    exists, code, text, frame = attempt(ctx, lambda ch: ch.queue_declare(queue, passive=True))
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
        listed = "; ".join(difference_text(d) for d in differences)
        more = "" if complete else " (and perhaps more)"
        return fail(name, ctx.clean(f"{queue} exists with other arguments than the worker declares: {listed}{more}; "
                                    f"{counts}"),
                    queue_fix(queue, ctx.broker_parameters.virtual_host, differences, complete, messages,
                              settings_for=settings_for or command_setting_for))
    if code == 403:
        return warn(name, f"{queue} exists ({counts}); its arguments could not be verified: no configure "
                          f"permission", "see the permissions check")
    return fail(name, ctx.clean(f"{queue} exists but re-declaring it with the worker's arguments failed: "
                                f"{code} {text}"))


@dataclass(frozen=True)
class Difference:
    """One argument (or property) of an existing queue that differs from what the worker declares."""

    argument: str
    wanted: Any     # ABSENT: the worker does not set it
    current: Any    # ABSENT: the queue does not have it


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
        accepted, code, text, _ = attempt(
            ctx, lambda ch: ch.queue_declare(queue, durable=True, arguments=dict(probe) or None))
        if first is None:
            first = (code, text)
        if accepted:
            return differences, True, *first
        if code != 406:
            break
        parsed = parse_inequivalent(text, probe.get(inequivalent_argument(text), None))
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


def difference_text(d: Difference) -> str:
    current = _shown(d.current)
    if d.argument == "x-queue-type" and d.current is ABSENT:
        current = "none (a classic queue)"
    return f"{d.argument} is {current}, the worker wants {_shown(d.wanted)}"


def _shown(value: Any) -> str:
    if value is ABSENT:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _arguments_text(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_shown(value)}" for key, value in arguments.items())


# Queue arguments the worker's settings decide, and the setting value that reproduces a given one.
def command_setting_for(d: Difference) -> str | None:
    """For the command and dead-letter queues."""
    if d.argument == "x-queue-type":
        return f"STORAGE_WORKER_QUEUE_TYPE={'classic' if d.current is ABSENT else d.current}"
    if d.argument == "x-delivery-limit" and isinstance(d.current, int) and d.current >= 1:
        return f"STORAGE_WORKER_DELIVERY_LIMIT={d.current}"
    if d.argument == "x-single-active-consumer":
        return f"STORAGE_WORKER_SINGLE_ACTIVE_CONSUMER={'true' if d.current is True else 'false'}"
    return None


def stream_setting_for(d: Difference) -> str | None:
    """For the event stream: its retention; nothing makes the worker declare another queue type."""
    if d.argument == "x-max-age" and isinstance(d.current, str):
        return f"STORAGE_WORKER_EVENT_STREAM_MAX_AGE={d.current}"
    if d.argument == "x-max-length-bytes" and isinstance(d.current, int) and d.current >= 1:
        return f"STORAGE_WORKER_EVENT_STREAM_MAX_BYTES={d.current}"
    return None


def queue_fix(queue: str, vhost: str, differences: list[Difference], complete: bool, messages: int,
              settings_for: Callable[[Difference], str | None] = command_setting_for) -> str:
    """Delete the queue (warning about the messages it holds), or, when settings can reproduce every
    difference found, set them; a queue's arguments cannot be changed in place."""
    delete = f"rabbitmqctl delete_queue -p {shlex.quote(vhost)} {shlex.quote(queue)}"
    loss = f" (it holds {messages} message(s): move them first or they are lost)" if messages else ""
    fix = f"delete it ({delete}){loss} and let the worker re-create it"
    settings = [settings_for(d) for d in differences]
    if complete and settings and all(settings):
        fix += f", or make the worker declare what exists: {' '.join(settings)}"  # type: ignore[arg-type]
    elif any(d.argument == "x-queue-type" and s for d, s in zip(differences, settings)):
        queue_type = next(s for d, s in zip(differences, settings) if d.argument == "x-queue-type")
        others = ", ".join(d.argument for d, s in zip(differences, settings) if s is None)
        if others:
            fix += f" ({queue_type} would match its type, but no setting matches its {others})"
        else:
            fix += f" ({queue_type} would match its type; other arguments may differ too)"
    return fix
