"""Which resources a command locks, and how: read from what its operation names (the `uses` of its
entry in messages.operations).

A volume it writes is taken exclusively, a volume it only reads shared (several readers of one
volume run together), and either way the volume's pool is shared. A pool it acts on as a whole is
taken exclusively, so the operation waits for the running volume operations in it. A domain it
changes is taken exclusively. Reads (info, list) lock nothing: they never wait behind a long upload.
"""

from __future__ import annotations

from enum import Enum

from messages.command import Command
from messages.operations import OPERATIONS, DomainRef, PoolRef, VolumeRef, read_path


class Mode(str, Enum):
    shared = "shared"
    exclusive = "exclusive"


Key = tuple[str, ...]
Claim = tuple[Key, Mode]


def pool_key(name: str) -> Key:
    return ("pool", name)


def volume_key(pool: str, name: str) -> Key:
    return ("volume", pool, name)


def domain_key(name: str) -> Key:
    return ("domain", name)


def claims_for(command: Command, *, reading: bool = False) -> tuple[Claim, ...]:
    """`reading`: the claims of a read that must keep its place before later writes of what it
    reads (one redelivered after a takeover waits a moment, worker/intake/intake.py): shared."""
    operation = OPERATIONS[command.op]
    if operation.read_only and not reading:
        return ()
    args = command.args
    wanted: list[Claim] = []
    for resource in operation.uses:
        if isinstance(resource, PoolRef):
            pool = read_path(args, resource.field)
            if pool is not None:
                wanted.append((pool_key(pool), Mode.exclusive if resource.whole and not reading else Mode.shared))
        elif isinstance(resource, VolumeRef):
            pool, name = read_path(args, resource.pool), read_path(args, resource.name)
            if pool is not None and name is not None:
                wanted += [(pool_key(pool), Mode.shared),
                           (volume_key(pool, name), Mode.exclusive if resource.writes and not reading
                            else Mode.shared)]
        elif isinstance(resource, DomainRef):
            domain = read_path(args, resource.field)
            if domain is not None:
                wanted.append((domain_key(domain), Mode.shared if reading else Mode.exclusive))
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
