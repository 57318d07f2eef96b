"""Whether the worker's exchanges exist with the type and durability it declares them with."""

from __future__ import annotations

import shlex

from worker.ops.doctor.broker import attempt
from worker.ops.doctor.context import Context
from worker.ops.doctor.report import Check, fail, ok, skip, warn


def check_exchanges(ctx: Context) -> Check:
    name = "exchanges"
    if ctx.broker is None:
        return skip(name, "not checked: the broker is unreachable")
    topology = ctx.settings.topology
    expected = [(topology.commands_exchange, "direct"), (topology.results_exchange, "topic"),
                (topology.events_exchange, "topic"), (topology.dead_letter_exchange, "topic")]
    missing, different, unverified = [], [], []
    for exchange, kind in expected:
        exists, code, text, _ = attempt(ctx, lambda ch: ch.exchange_declare(exchange, passive=True))
        if not exists:
            if code == 404:
                missing.append(exchange)
                continue
            return fail(name, ctx.clean(f"cannot look up exchange {exchange!r}: {code} {text}"))
        same, code, text, _ = attempt(ctx, lambda ch: ch.exchange_declare(exchange, exchange_type=kind,
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
