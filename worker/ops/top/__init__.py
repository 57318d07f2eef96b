"""`storage-worker top`: a live view of the fleet, built only from what any monitoring consumer
reads — the event stream (from a point in its history, then live) and the results exchange.

    event stream --+                  +--> state.Fleet (the fold) --> view.render --> rich Live
    results -------+--> StorageClient +
    keys (q quits) ----------------------------------------------------------------> the loop
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from rich.console import Console
from rich.live import Live

from messages.client import StorageClient
from messages.stream import Start
from worker.ops.top.keys import Keys
from worker.ops.top.state import Fleet
from worker.ops.top.view import render

REDRAW_EVERY = 0.5  # seconds
PUMP = 0.1  # seconds the broker is listened to between looks at the keyboard


def run(client: StorageClient, source: str, *, since: datetime | None, start: Start | None,
        console: Console | None = None) -> int:
    """Until `q` (or Ctrl-C, which the caller handles); `source` names where the view reads from."""
    fleet = Fleet()
    client.on_results(fleet.apply_result)
    client.on_events(lambda event, _offset: fleet.apply_event(event), since=since, offset=start,
                     on_gap=fleet.apply_gap)
    with Keys() as keys, Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                              redirect_stderr=False) as live:
        drawn = 0.0
        while "q" not in keys.pressed().lower():
            if time.monotonic() - drawn >= REDRAW_EVERY:
                live.update(render(fleet, datetime.now(timezone.utc), source, live.console.size.height),
                            refresh=True)
                drawn = time.monotonic()
            client.pump(PUMP)
    return 0
