"""Partitions of a disk pool's device: what parted reports, and the name libvirt will insist on.

libvirt (9.0.0) creates a partition with parted, then names the new volume as its helper names the
partition parted made: the device's name, 'p' when that name ends in a digit (loop0 -> loop0p1,
sda -> sda1), and the partition's number. The volume's name must be exactly that; any other name
fails with INVALID_ARG "invalid partition name 'x', expected 'loop0p3'" *after* the partition was
made, and libvirt's own clean-up of it fails on such devices (it runs `parted DEV rm pN`), so the
partition leaks and the pool's free-space list stays empty until a refresh. Hence the worker
computes the name first.

The number parted gives: on GPT (and every label but msdos) the lowest free one; on msdos a
primary (or extended) partition takes the lowest free number of 1-4 while fewer than four exist,
after that a logical one the number after the highest logical (5, 6...) — libvirt makes a new
partition primary while fewer than four primary or extended ones exist, else logical.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# A partition of a mostly-full four-slot msdos table is at most one cylinder (255 heads x 63
# sectors x 512 bytes) larger than asked: libvirt aligns msdos partitions to cylinders, GPT ones to
# the sector (512 bytes). A partition that large or smaller is "the size asked for" when a create
# is repeated.
ROUNDING = 255 * 63 * 512


@dataclass(frozen=True)
class Partition:
    number: int
    start: int
    size: int


@dataclass(frozen=True)
class Table:
    label: str | None  # gpt, msdos, ...; None: no partition table
    partitions: tuple[Partition, ...] = ()

    @property
    def numbers(self) -> set[int]:
        return {p.number for p in self.partitions}


def parse_parted(output: str) -> Table:
    """The table from `parted -s -m DEV unit B print`:
        BYT;
        /dev/loop0:67108864B:loopback:512:512:gpt:Loopback device:;
        1:17408B:8405503B:8388096B::p1:;
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if len(lines) < 2:
        return Table(label=None)
    device = lines[1].rstrip(";").split(":")
    label = device[5] if len(device) > 5 and device[5] not in ("", "unknown") else None
    found = []
    for line in lines[2:]:
        fields = line.rstrip(";").split(":")
        if len(fields) >= 4 and fields[0].isdigit():
            found.append(Partition(int(fields[0]), int(fields[1].rstrip("B")), int(fields[3].rstrip("B"))))
    return Table(label=label, partitions=tuple(found))


def separator(device: str) -> str:
    return "p" if os.path.basename(device)[-1:].isdigit() else ""


def partition_name(device: str, number: int) -> str:
    """The kernel's name of partition `number` of `device` (/dev/loop0, 2 -> loop0p2)."""
    return f"{os.path.basename(device)}{separator(device)}{number}"


def number_of(device: str, volume_name: str) -> int | None:
    """The partition number a volume name of this device's pool stands for, or None."""
    match = re.fullmatch(re.escape(os.path.basename(device) + separator(device)) + r"([0-9]+)", volume_name)
    return int(match.group(1)) if match else None


def next_number(table: Table, fmt: str | None = None) -> int | None:
    """The number parted will give the next partition libvirt makes, or None when it cannot be
    told (no table, or no primary slot left on msdos for an extended partition)."""
    if table.label is None:
        return None
    numbers = table.numbers
    if table.label != "msdos":
        return min(n for n in range(1, len(numbers) + 2) if n not in numbers)
    primary = {n for n in numbers if n <= 4}
    if fmt == "extended" or len(primary) < 4:
        free = [n for n in range(1, 5) if n not in primary]
        return free[0] if free else None
    return max([n for n in numbers if n > 4], default=4) + 1
