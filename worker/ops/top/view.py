"""Drawing a `Fleet` with rich: hosts, pools with capacity bars, running jobs with progress bars,
rates and ETA, the last failures. Pure: the same fleet and time give the same picture."""

from __future__ import annotations

from datetime import datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from worker.ops.top.state import Fleet, JobView, PoolView

BAR_WIDTH = 24
POOLS_SHOWN = 15  # without a screen height
POOLS_SHOWN_AT_LEAST = 5
BOX = box.SIMPLE_HEAD
FULL, EMPTY = "█", "░"  # distinct without colour too, so a text capture shows the bar


def bar(fraction: float, style: str, width: int = BAR_WIDTH) -> Text:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return Text.assemble((FULL * filled, style), (EMPTY * (width - filled), "grey50"))


def size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m ago"
    return f"{seconds // 86400:.0f}d ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _clock(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S")


def hosts_table(fleet: Fleet, now: datetime) -> Table:
    table = Table(title="Hosts", title_justify="left", expand=True, box=BOX, show_edge=False)
    for column in ("host", "state", "last seen", "pools", "jobs", "note"):
        table.add_column(column)
    running = fleet.running_jobs(now)
    for host in sorted(fleet.hosts.values(), key=lambda h: h.host):
        if not host.online:
            state = Text("offline", "bold red")
        elif not host.libvirt_connected:
            state = Text("no libvirt", "bold yellow")
        else:
            state = Text("online", "bold green")
        seen = f"{_clock(host.last_seen)} ({ago((now - host.last_seen).total_seconds())})"
        table.add_row(host.host, state, seen, str(len(fleet.pools_of(host.host))),
                      str(sum(1 for job in running if job.host == host.host)), host.reason or "")
    return table


def _pool_state(pool: PoolView) -> Text:
    if pool.low:
        return Text(f"{pool.state} LOW", "bold red")
    return Text(pool.state, "green" if pool.state == "running" else "yellow")


def shown_pools(fleet: Fleet, limit: int) -> list[PoolView]:
    """At most `limit` pools, by host and name: those low on space first, then the latest changed."""
    chosen = sorted(fleet.pools.values(), key=lambda p: (not p.low, -p.updated.timestamp()))[:limit]
    return sorted(chosen, key=lambda p: (p.host, p.name))


def pools_table(fleet: Fleet, limit: int = POOLS_SHOWN) -> Table:
    hidden = max(0, len(fleet.pools) - limit)
    table = Table(title="Pools", title_justify="left", expand=True, box=BOX, show_edge=False,
                  caption=f"{hidden} more pool(s) not shown: the low ones and the latest changed are" if hidden
                  else None, caption_justify="left")
    for column in ("host", "pool", "state", "used", "%", "allocated", "available", "capacity"):
        table.add_column(column, justify="right" if column in ("%", "allocated", "available", "capacity") else "left")
    for pool in shown_pools(fleet, limit):
        table.add_row(pool.host, pool.name, _pool_state(pool), bar(pool.used, "red" if pool.low else "cyan"),
                      f"{pool.used:.0%}", size(pool.allocation), size(pool.available), size(pool.capacity))
    return table


def jobs_table(jobs: list[JobView]) -> Table:
    table = Table(title="Running jobs", title_justify="left", expand=True, box=BOX, show_edge=False)
    for column in ("host", "op", "command", "progress", "%", "done", "rate", "ETA"):
        table.add_column(column, justify="right" if column in ("%", "done", "rate", "ETA") else "left")
    for job in jobs:
        table.add_row(job.host, job.op, job.id[:12], bar(job.done, "magenta"), f"{job.done:.0%}",
                      f"{size(job.bytes_done)} / {size(job.bytes_total)}", f"{size(job.rate)}/s", duration(job.eta))
    return table


def failures_table(fleet: Fleet) -> Table:
    table = Table(title="Last failures", title_justify="left", expand=True, box=BOX, show_edge=False)
    for column in ("time", "host", "op", "status", "code", "message"):
        table.add_column(column, overflow="ellipsis", no_wrap=column == "message",
                         ratio=1 if column == "message" else None)
    for failure in fleet.failures:
        table.add_row(_clock(failure.at), failure.host, failure.op, failure.status,
                      Text(failure.code, "bold red"), failure.message)
    return table


def pool_rows(fleet: Fleet, now: datetime, height: int) -> int:
    """How many pool rows fit on a screen `height` lines high beside everything else (at least a few)."""
    others = 1 + 3 * 4 + 1 + len(fleet.hosts) + len(fleet.running_jobs(now)) + len(fleet.failures)
    return max(POOLS_SHOWN_AT_LEAST, height - others)


def render(fleet: Fleet, now: datetime, source: str, height: int | None = None) -> RenderableType:
    """The whole view; `source` says where it reads from (prefix and start). With a `height`, the
    pools table gets the lines the other tables leave."""
    header = Text.assemble(("storage-worker top", "bold"), f"  {source}  ",
                           f"{fleet.events_seen} events, {fleet.results_seen} results  ",
                           (f"{len(fleet.gaps)} gap(s), last: {fleet.gaps[0]}  " if fleet.gaps else "", "yellow"),
                           ("q quits", "dim"))
    limit = POOLS_SHOWN if height is None else pool_rows(fleet, now, height)
    return Group(header, hosts_table(fleet, now), pools_table(fleet, limit), jobs_table(fleet.running_jobs(now)),
                 failures_table(fleet))
