"""The commands that watch the fleet the way any monitoring consumer can: `events` (one line per
event, live or replayed from the event stream) and `top` (a live view)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from pika.exceptions import AMQPError

from messages.stream import Start, parse_since, parse_start

if TYPE_CHECKING:
    from worker.config import Settings


def describe_event(event) -> str:
    """One readable line per event."""
    data = event.data
    if "volume" in data:
        volume = data["volume"]
        detail = f"{data['pool']}/{volume['name']} capacity={volume['capacity']} origin={data['origin']}"
        if data.get("disk"):
            detail += f" disk={data['disk']['domain']}:{data['disk']['target']}"
    elif "pool" in data:
        pool = data["pool"]
        detail = (f"{pool['name']} state={pool['state']} available={pool['available']}/{pool['capacity']}")
        if "threshold" in data:
            detail += f" threshold={data['threshold']}"
    elif "bytes_done" in data:
        share = data["bytes_done"] / data["bytes_total"] if data["bytes_total"] else 1.0
        detail = (f"{data['op']} {data['id']} {data['bytes_done']}/{data['bytes_total']} ({share:.0%}) "
                  f"{data['rate'] / 2**20:.1f} MiB/s")
    else:
        detail = f"{data.get('host_id', '')} {data.get('reason') or ''}".strip()
    command = f" command={event.commandid}" if event.commandid else ""
    time_text = event.time.strftime("%H:%M:%S.%f")[:-3]
    return f"{time_text} {event.host} #{event.sequence} {event.type.suffix} {detail}{command}"


def events(ns: argparse.Namespace, settings: Settings) -> int:
    """`storage-worker events`: one line (or the JSON) per event, live or from the stream."""
    from messages.client import NoEventStream, StorageClient

    replaying = ns.since is not None or ns.start is not None

    def show(event, offset) -> None:
        line = event.model_dump_json(exclude_none=True) if ns.json else describe_event(event)
        print(line if ns.json or offset is None else f"{line} offset={offset}", flush=True)

    def gap(missing) -> None:
        print(f"storage-worker events: gap: {missing}", file=sys.stderr, flush=True)

    try:
        with StorageClient(settings.amqp_url.get_secret_value(), prefix=settings.prefix,
                           ca_file=settings.amqp_ca_file, cert_file=settings.amqp_cert_file,
                           key_file=settings.amqp_key_file) as client:
            client.on_events(show, ns.pattern, since=ns.since, offset=ns.start, on_gap=gap if replaying else None)
            while True:
                client.pump(1.0)
    except KeyboardInterrupt:
        return 0
    except NoEventStream as error:
        print(f"storage-worker events: {error}", file=sys.stderr)
        return 1
    except (AMQPError, OSError) as error:
        print(f"storage-worker events: cannot reach the broker: {error!r}", file=sys.stderr)
        return 1


TOP_HISTORY = "1h"  # where `top` starts without --since or --from


def top(ns: argparse.Namespace, settings: Settings) -> int:
    """`storage-worker top`: the live view of the fleet until q."""
    from messages.client import NoEventStream, StorageClient
    from worker.ops.top import run

    since = ns.since if ns.since is not None or ns.start is not None else parse_since(TOP_HISTORY)
    start_text = f"from offset {ns.start}" if ns.start is not None else \
        f"since {since.astimezone().isoformat(timespec='seconds')}"
    try:
        with StorageClient(settings.amqp_url.get_secret_value(), prefix=settings.prefix,
                           ca_file=settings.amqp_ca_file, cert_file=settings.amqp_cert_file,
                           key_file=settings.amqp_key_file) as client:
            return run(client, f"{settings.topology.event_stream} {start_text}", since=since, start=ns.start)
    except KeyboardInterrupt:
        return 0
    except NoEventStream as error:
        print(f"storage-worker top: {error}", file=sys.stderr)
        return 1
    except (AMQPError, OSError) as error:
        print(f"storage-worker top: cannot reach the broker: {error!r}", file=sys.stderr)
        return 1


def since_argument(text: str) -> datetime:
    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def start_argument(text: str) -> Start:
    try:
        return parse_start(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
