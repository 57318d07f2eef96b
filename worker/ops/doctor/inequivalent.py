"""Reading RabbitMQ's 406 PRECONDITION_FAILED "inequivalent arg" reply: which queue argument differs
and what the existing queue has for it."""

from __future__ import annotations

import re
from typing import Any


class _Absent:
    def __repr__(self) -> str:
        return "none"


# The value of an argument a queue does not have, or a declaration does not set (RabbitMQ: "none").
ABSENT: Any = _Absent()

# RabbitMQ's PRECONDITION_FAILED text names the first argument that differs and, in one of three
# forms, the existing value: "... but current is none", "... but current is the value 'quorum' of
# type 'longstr'", or (same type on both sides) "received 'false' but current is 'true'".
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue .*: received .* but current is "
    r"(?:(?P<none>none)|the value '(?P<value>[^']*)' of type '(?P<type>[^']*)'|'(?P<same>[^']*)')\s*$")
_INTEGER_TYPES = {"signedint", "long", "short", "byte", "unsignedint", "unsignedshort", "unsignedbyte",
                  "long_uint", "long_int"}


def parse_inequivalent(text: str, sent: Any) -> tuple[str, Any] | None:
    """(argument, existing value or ABSENT) from a 406 reply text; `sent` is what the probe declared
    for that argument (it gives the type of a same-type answer). None when the text is not understood."""
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    argument = match.group("arg")
    if match.group("none"):
        return argument, ABSENT
    if match.group("type") is not None:
        raw, kind = match.group("value"), match.group("type")
        if kind == "longstr":
            return argument, raw
        if kind == "bool":
            return argument, raw == "true"
        if kind in _INTEGER_TYPES:
            try:
                return argument, int(raw)
            except ValueError:
                return None
        return None
    raw = match.group("same")
    if isinstance(sent, bool):
        return argument, raw == "true"
    if isinstance(sent, int):
        try:
            return argument, int(raw)
        except ValueError:
            return None
    return argument, raw


def inequivalent_argument(text: str) -> str:
    """The argument a 406 reply text names, or "" (for looking up what the probe sent for it)."""
    match = re.search(r"inequivalent arg '([^']+)'", text)
    return match.group(1) if match else ""
