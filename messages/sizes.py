"""Human sizes for command-line use: 10G, 512M, 1.5T (binary units, as virsh reads them)."""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)
SIZE_FIELDS = frozenset({"capacity", "allocation", "offset", "length"})


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write bytes or a number with K, M, G, T or P, e.g. 10G")
    number, unit = match.groups()
    value = Fraction(number) * _UNITS[unit.upper()]  # exact: a float rounds sizes above 2**53
    if value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)
