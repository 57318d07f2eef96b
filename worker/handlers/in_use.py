"""In-use protection: a volume that a domain or another volume uses is not deleted, wiped, shrunk or
overwritten (error `in_use`, docs/contract.md "Volumes in use").

Before such an operation the worker scans the domains once and the volumes of the running pools
once (worker/virt/usage.py). A running guest's disk — or a link of its backing chain — is never
touched, whatever the command says. Domains that are not running and volumes built on this one
(which a running guest does not use either) are the caller's to override with `force: true`; they
are then left pointing at what the operation made of the volume.

The check and the operation are two steps: a domain started, or a disk attached by someone else,
between them is not seen. Commands of this worker on the same volume never fall in between (the
volume is locked for the whole command).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.errors import in_use
from worker.handlers.context import Context
from worker.virt.usage import DomainScan, DomainUse, VolumeName, dependants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Act:
    """What the operation would do to the volume, in the words of its messages."""

    verb: str
    done: str


DELETE = Act("delete", "deleted")
WIPE = Act("wipe", "wiped")
SHRINK = Act("shrink", "shrunk")
OVERWRITE = Act("overwrite", "overwritten")


def domain_names(uses: list[DomainUse]) -> list[str]:
    return sorted({use.domain for use in uses})


def refuse_if_in_use(ctx: Context, act: Act, pool: str, name: str, path: str, *, force: bool) -> list[str]:
    """Raise `in_use` when something uses the volume (with force: only a running guest); returns
    the names of the domains that use it themselves (the volume object's `in_use_by`)."""
    scan = DomainScan.read(ctx.conn)
    own = scan.users(pool, name, path)
    built = dependants(ctx.conn, path, ctx.inventory.volumes if ctx.inventory is not None else None)
    through = [use for volume in built for use in scan.users(volume.pool, volume.name, volume.path, via=volume)]
    uses = own + through
    volume = VolumeName(pool, name, path)
    if any(use.live for use in uses):
        raise in_use(f"{volume} is in use: {_users(uses, built)}; nothing was {act.done}. A running guest's disk is "
                     f"never {act.done}, with force or without: stop the domain or detach the disk first")
    if uses or built:
        if not force:
            first = " and ".join(step for step, needed in (("detach it", uses), ("remove the volumes built on it",
                                                                                 built)) if needed)
            raise in_use(f"{volume} is in use: {_users(uses, built)}; nothing was {act.done}. {first.capitalize()} "
                         f"first, or send force: true to {act.verb} it anyway")
        log.warning("volume in use, going ahead with force", extra={
            "command_id": ctx.command.id, "pool": pool, "volume": name, "op": ctx.command.op,
            "domains": domain_names(uses), "dependants": [f"{v.pool}/{v.name}" for v in built]})
    return domain_names(own)


def _users(uses: list[DomainUse], built: list[VolumeName]) -> str:
    """Each domain once, by its closest use (running before defined, the volume itself before a
    volume built on it), then the volumes built on it."""
    closest: dict[str, DomainUse] = {}
    for use in sorted(uses, key=lambda u: (not u.live, u.via is not None)):
        closest.setdefault(use.domain, use)
    parts = [use.describe() for use in sorted(closest.values(), key=lambda u: (not u.live, u.domain))]
    if built:
        parts.append(f"volumes are built on it: {', '.join(str(v) for v in built)}")
    return "; ".join(parts)
