"""The operator interface (docs/contract.md "Running the worker"): storage-worker run | call | events | top |
dead | schema | doctor."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pika.exceptions import AMQPError

from messages.sizes import SIZE_FIELDS, parse_size
from worker.ops.watching import TOP_HISTORY, since_argument, start_argument


def _settings_flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {"host_id": getattr(ns, "host_id", None), "amqp_url": getattr(ns, "amqp_url", None),
            "libvirt_uri": getattr(ns, "libvirt_uri", None), "prefix": getattr(ns, "prefix", None)}


def _load(ns: argparse.Namespace):
    from worker.config import load_settings

    return load_settings(_settings_flags(ns), getattr(ns, "config", None))


def _path(value: Any) -> str | None:
    return None if value is None else str(value)


def _value(key: str, text: str) -> Any:
    if key.rsplit(".", 1)[-1] in SIZE_FIELDS:
        return parse_size(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(pairs: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """key=value pairs into args; dotted keys nest (target.path=/x), values are JSON where they parse
    (true, 3, {"a": 1}) and text otherwise; size fields accept 10G, 512M."""
    args: dict[str, Any] = dict(base or {})
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r} is not key=value")
        node = args
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"argument {pair!r}: {part!r} is already set to a value")
        node[leaf] = _value(key, text)
    return args


def cmd_run(ns: argparse.Namespace) -> int:
    from worker.app import Worker
    from worker.telemetry.logs import configure

    settings = _load(ns)
    configure(settings.log_format, settings.log_level, settings.host_id)
    try:
        worker = Worker(settings)
    except (ValueError, OSError) as error:  # e.g. an unreadable TLS key or state dir
        print(f"storage-worker run: {error}", file=sys.stderr)
        return 2
    return worker.run_until_signalled()


class ProgressBar:
    """One line on a terminal, redrawn for each progress event of a long job."""

    WIDTH = 30

    def __init__(self, stream):
        self._stream = stream
        self._drawn = False

    def show(self, progress) -> None:
        share = progress.bytes_done / progress.bytes_total if progress.bytes_total else 0.0
        filled = int(share * self.WIDTH)
        self._stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%} "
                           f"{progress.bytes_done / 2**20:,.0f}/{progress.bytes_total / 2**20:,.0f} MiB "
                           f"{progress.rate / 2**20:,.1f} MiB/s ")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def cmd_call(ns: argparse.Namespace) -> int:
    from messages.client import CallTimeout, NoWorker, StorageClient

    settings = _load(ns)
    try:
        base = json.loads(ns.args) if ns.args else {}
        args = parse_pairs(ns.pairs, base)
    except (ValueError, json.JSONDecodeError) as error:
        print(f"storage-worker call: {error}", file=sys.stderr)
        return 1
    from messages.operations import OPERATIONS

    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and ns.op in OPERATIONS \
        and OPERATIONS[ns.op].long_running else None
    try:
        with StorageClient(settings.amqp_url.get_secret_value(), host_id=settings.host_id,
                           prefix=settings.prefix, ca_file=settings.amqp_ca_file,
                           cert_file=settings.amqp_cert_file, key_file=settings.amqp_key_file) as client:
            result = client.call(ns.op, args, command_id=ns.id, timeout=ns.timeout,
                                 on_progress=bar.show if bar else None)
    except (CallTimeout, NoWorker) as error:
        print(f"storage-worker call: {error}", file=sys.stderr)
        return 1
    except (AMQPError, OSError) as error:  # refused, unreachable, bad credentials, TLS verification
        print(f"storage-worker call: cannot reach the broker: {error!r}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(result.model_dump_json(indent=2))
    return 0 if result.status.value == "succeeded" else 1


def cmd_events(ns: argparse.Namespace) -> int:
    from worker.ops.watching import events

    return events(ns, _load(ns))


def cmd_top(ns: argparse.Namespace) -> int:
    from worker.ops.watching import top

    return top(ns, _load(ns))


def cmd_dead(ns: argparse.Namespace) -> int:
    from worker.ops.deadletters import DeadLetters

    settings = _load(ns)
    from worker.transport.parameters import node_parameters

    nodes = node_parameters(settings.amqp_url.get_secret_value(), heartbeat=settings.amqp_heartbeat,
                            ca_file=_path(settings.amqp_ca_file), cert_file=_path(settings.amqp_cert_file),
                            key_file=_path(settings.amqp_key_file), name="storage-worker dead")
    dead = DeadLetters(nodes, settings.topology)
    try:
        if ns.action == "list":
            letters = dead.list()
            for letter in letters:
                if ns.json:
                    print(json.dumps({"command_id": letter.command_id, "message_id": letter.message_id,
                                      "routing_key": letter.routing_key, "reason": letter.reason,
                                      "body": letter.body.decode("utf-8", "replace")}))
                else:
                    print(f"{letter.command_id or letter.message_id or '-'}\t{letter.routing_key}\t{letter.reason}")
            if not letters and not ns.json:
                print(f"{settings.topology.dead_letter_queue} is empty", file=sys.stderr)
            return 0
        if ns.id is None:
            print("storage-worker dead replay: give the command id (or message id) to replay", file=sys.stderr)
            return 1
        replayed = dead.replay(ns.id)
        if replayed is None:
            print(f"storage-worker dead replay: no message with id {ns.id!r} in "
                  f"{settings.topology.dead_letter_queue}", file=sys.stderr)
            return 1
        print(f"replayed {ns.id} to {settings.topology.commands_exchange} with routing key {replayed.routing_key}")
        return 0
    finally:
        dead.close()


def cmd_schema(ns: argparse.Namespace) -> int:
    if getattr(ns, "asyncapi", False):
        from messages.asyncapi import asyncapi_document

        print(json.dumps(asyncapi_document(), indent=2, sort_keys=False))
        return 0
    from messages.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    from worker.ops.doctor import doctor

    return doctor(_settings_flags(ns), getattr(ns, "config", None), as_json=ns.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storage-worker", description="libvirt storage worker")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host-id", help="host id: routing key and queue suffix (default: short hostname)")
        p.add_argument("--amqp-url", help="broker URL, or the URLs of a cluster's nodes separated by ';' or as "
                                          "a JSON list (default amqp://guest:guest@localhost:5672/%%2F)")
        p.add_argument("--prefix", help="prefix of every exchange and queue name (default storage)")
        p.add_argument("--config", help="TOML settings file")

    run = sub.add_parser("run", help="run the worker in the foreground")
    common(run)
    run.add_argument("--libvirt-uri", help="libvirt URI (default qemu:///system)")
    run.set_defaults(func=cmd_run)

    call = sub.add_parser("call", help="send one command, print its result as JSON")
    common(call)
    call.add_argument("op", help="operation, e.g. volume.create")
    call.add_argument("pairs", nargs="*", metavar="key=value", help="arguments; sizes accept 10G, 512M")
    call.add_argument("--args", help="arguments as a JSON object (key=value pairs are merged over it)")
    call.add_argument("--id", help="command id (default: a new UUID)")
    call.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    call.set_defaults(func=cmd_call)

    events = sub.add_parser("events", help="follow the events, one line per event; replay them with --since/--from")
    common(events)
    events.add_argument("pattern", nargs="?", default="#",
                        help="topic pattern on <host>.<event>, e.g. '*.volume.*' (default: everything)")
    events.add_argument("--json", action="store_true", help="print each event's JSON body")
    start = events.add_mutually_exclusive_group()
    start.add_argument("--since", type=since_argument, metavar="WHEN",
                       help="replay from the event stream, from this long ago (10m, 2h, 7d) or this time "
                            "(2026-12-01T10:00Z), then follow live")
    start.add_argument("--from", dest="start", type=start_argument, metavar="WHERE",
                       help="replay from the event stream from first, last, next or a stream OFFSET "
                            "(printed as offset=N), then follow live")
    events.set_defaults(func=cmd_events)

    top = sub.add_parser("top", help="a live view of the fleet from the event stream and the results; q quits")
    common(top)
    start = top.add_mutually_exclusive_group()
    start.add_argument("--since", type=since_argument, metavar="WHEN",
                       help=f"start from the events of this long ago (10m, 2h, 7d) or this time "
                            f"(2026-12-01T10:00Z); default {TOP_HISTORY}")
    start.add_argument("--from", dest="start", type=start_argument, metavar="WHERE",
                       help="start from first (all the stream keeps), last, next or a stream OFFSET")
    top.set_defaults(func=cmd_top)

    dead = sub.add_parser("dead", help="list or replay dead-lettered messages")
    common(dead)
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("id", nargs="?", help="with replay: the command id (or AMQP message id) to send again")
    dead.add_argument("--json", action="store_true", help="with list: one JSON object per message")
    dead.set_defaults(func=cmd_dead)

    doctor = sub.add_parser("doctor", help="check broker, libvirt, state dir and settings; say what to fix")
    common(doctor)
    doctor.add_argument("--libvirt-uri", help="libvirt URI (default qemu:///system)")
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON document")
    doctor.set_defaults(func=cmd_doctor)

    schema = sub.add_parser("schema", help="print the JSON Schema (or the AsyncAPI 3.0 document) of the contract")
    schema.add_argument("--asyncapi", action="store_true",
                        help="print the AsyncAPI 3.0 document of the whole contract instead of the JSON Schema")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
