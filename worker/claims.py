"""Which resources a command locks, and how (DESIGN: per-volume exclusive, per-pool shared/exclusive).

Volume operations share their pool and take their volume exclusively; pool-wide operations take the
pool exclusively, so they wait for running volume operations in it. Reads (info, list) lock nothing:
they never wait behind a long upload. Sources that are only read (a clone's source, a backing
volume, a download) are taken shared, so several readers of one volume run together.
"""

from __future__ import annotations

from enum import Enum
from messages.command import Command


class Mode(str, Enum):
    shared = "shared"
    exclusive = "exclusive"


Key = tuple[str, ...]
Claim = tuple[Key, Mode]

_POOL_EXCLUSIVE = {"pool.define", "pool.build", "pool.start", "pool.stop", "pool.delete", "pool.undefine",
                   "pool.autostart", "pool.refresh"}
_VOLUME_WRITES = {"volume.create", "volume.resize", "volume.wipe", "volume.upload", "volume.delete"}


def pool_key(name: str) -> Key:
    return ("pool", name)


def volume_key(pool: str, name: str) -> Key:
    return ("volume", pool, name)


def domain_key(name: str) -> Key:
    return ("domain", name)


def claims_for(command: Command) -> tuple[Claim, ...]:
    op, a = command.op, command.args
    wanted: list[Claim] = []
    if op in _POOL_EXCLUSIVE:
        wanted.append((pool_key(a.name), Mode.exclusive))
    elif op in _VOLUME_WRITES:
        wanted += [(pool_key(a.pool), Mode.shared), (volume_key(a.pool, a.name), Mode.exclusive)]
        backing = getattr(a, "backing", None)
        if backing is not None:
            wanted += [(pool_key(backing.pool), Mode.shared), (volume_key(backing.pool, backing.name), Mode.shared)]
    elif op == "volume.clone":
        source_pool = a.source_pool or a.pool
        wanted += [(pool_key(a.pool), Mode.shared), (volume_key(a.pool, a.name), Mode.exclusive),
                   (pool_key(source_pool), Mode.shared), (volume_key(source_pool, a.source), Mode.shared)]
    elif op == "volume.download":
        wanted += [(pool_key(a.pool), Mode.shared), (volume_key(a.pool, a.name), Mode.shared)]
    elif op == "volume.attach":
        wanted += [(pool_key(a.pool), Mode.shared), (volume_key(a.pool, a.name), Mode.shared),
                   (domain_key(a.domain), Mode.exclusive)]
    elif op == "volume.detach":
        wanted.append((domain_key(a.domain), Mode.exclusive))
    return _merged(wanted)


def _merged(claims: list[Claim]) -> tuple[Claim, ...]:
    """One claim per key, the stronger mode winning (a clone within one pool shares it once)."""
    strongest: dict[Key, Mode] = {}
    for key, mode in claims:
        if strongest.get(key) != Mode.exclusive:
            strongest[key] = mode
    return tuple(strongest.items())


def conflicts(a: Mode, b: Mode) -> bool:
    return a == Mode.exclusive or b == Mode.exclusive
