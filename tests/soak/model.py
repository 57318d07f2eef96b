"""What libvirt should hold after the commands that succeeded: each volume's capacity (or absence),
each pool's state, each attached disk.

A command that succeeded fixes the new value. One that failed for a reason that says it did
nothing (invalid, not_found, conflict, no_space, in_use, forbidden, a rejection) leaves the old
one. One whose outcome the worker cannot know (unavailable, timeout: libvirtd went away while it
ran) may have happened or not: both values stay possible until a later read (`volume.info`,
`pool.info`) says which. The checker then requires what libvirt holds to be one of the possible
values: a side effect that ran twice, or ran for a command that said it did not, shows up as a
value nobody allowed.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

ABSENT = None
# Error codes after which the operation had no effect.
NO_EFFECT = {"invalid", "not_found", "conflict", "no_space", "in_use", "forbidden", "busy", "unsupported",
             "expired", "cancelled"}


@dataclass
class Model:
    """Possible values per key: ('vol', host, pool, name) -> capacity or ABSENT; ('pool', host, name)
    -> 'running' | 'inactive' | ABSENT; ('disk', host, domain, target) -> volume name or ABSENT."""

    values: dict[Hashable, set] = field(default_factory=dict)

    def possible(self, key: Hashable) -> set:
        return self.values.get(key, {ABSENT})

    def certain(self, key: Hashable):
        """The one possible value, or raise LookupError when there are several."""
        values = self.possible(key)
        if len(values) != 1:
            raise LookupError(key)
        return next(iter(values))

    def known(self, key: Hashable) -> bool:
        return len(self.possible(key)) == 1

    def outcome(self, key: Hashable, new, status: str, code: str | None) -> None:
        """Apply one command's result to `key`, which it would have set to `new`."""
        if status == "succeeded":
            self.values[key] = {new}
        elif status in ("rejected",) or code in NO_EFFECT:
            return
        else:  # failed unavailable/timeout/internal: it may have happened
            self.values[key] = self.possible(key) | {new}

    def observed(self, key: Hashable, value) -> bool:
        """A read saw `value`: whether it was possible; from now on it is the value."""
        allowed = value in self.possible(key)
        self.values[key] = {value}
        return allowed

    def keys(self, kind: str) -> list[tuple]:
        return [key for key in self.values if isinstance(key, tuple) and key[0] == kind]
