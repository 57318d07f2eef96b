"""Partitions of disk pools (worker.virt.partitions): parted's machine output, the kernel's names and
the number the next partition gets, as measured with libvirt 9.0.0 and parted 3.5 on loop devices."""

from __future__ import annotations

import pytest

from worker.virt import partitions
from worker.virt.partitions import Partition, Table

GPT = """BYT;
/dev/loop3:67108864B:loopback:512:512:gpt:Loopback device:;
1:17408B:8405503B:8388096B::p1:;
3:16794112B:26794495B:10000384B::p3:;
"""
# A dos label after libvirt made p1, the extended p2, a logical p5 and the primaries p3, p4.
DOS = """BYT;
/dev/loop0:134217728B:loopback:512:512:msdos:Loopback device:;
1:1024B:8616959B:8615936B:::;
2:8616960B:75985919B:67368960B:::lba;
5:8618496B:17233919B:8615424B:::;
3:75985920B:84602879B:8616960B:::;
4:84602880B:93219839B:8616960B:::;
"""


def table(label: str | None, *numbers: int) -> Table:
    return Table(label=label, partitions=tuple(Partition(n, n * 1024, 1024) for n in numbers))


def test_parse_gpt():
    parsed = partitions.parse_parted(GPT)
    assert parsed.label == "gpt"
    assert parsed.partitions == (Partition(1, 17408, 8388096), Partition(3, 16794112, 10000384))


def test_parse_dos_and_an_empty_or_missing_table():
    assert partitions.parse_parted(DOS).label == "msdos"
    assert sorted(partitions.parse_parted(DOS).numbers) == [1, 2, 3, 4, 5]
    empty = partitions.parse_parted("BYT;\n/dev/loop1:16777216B:loopback:512:512:gpt:Loopback device:;\n")
    assert empty == Table(label="gpt")
    assert partitions.parse_parted("") == Table(label=None)
    unknown = partitions.parse_parted("BYT;\n/dev/loop1:16777216B:loopback:512:512:unknown:Loopback device:;\n")
    assert unknown.label is None


@pytest.mark.parametrize("device, number, name", [
    ("/dev/loop3", 1, "loop3p1"), ("/dev/sda", 2, "sda2"), ("/dev/nvme0n1", 3, "nvme0n1p3"),
    ("/dev/vdb", 12, "vdb12"), ("/dev/mmcblk0", 1, "mmcblk0p1"),
])
def test_kernel_names_and_back(device, number, name):
    assert partitions.partition_name(device, number) == name
    assert partitions.number_of(device, name) == number


@pytest.mark.parametrize("device, name", [("/dev/loop3", "data"), ("/dev/loop3", "loop31"), ("/dev/sda", "sdb1"),
                                          ("/dev/loop3", "loop3p"), ("/dev/sda", "sda1x")])
def test_names_that_are_no_partition_of_the_device(device, name):
    assert partitions.number_of(device, name) is None


def test_gpt_takes_the_lowest_free_number():
    assert partitions.next_number(table("gpt")) == 1
    assert partitions.next_number(table("gpt", 1, 2)) == 3
    assert partitions.next_number(table("gpt", 1, 3)) == 2
    assert partitions.next_number(table("gpt", 2, 3)) == 1


def test_dos_primaries_then_logicals():
    assert partitions.next_number(table("msdos")) == 1
    assert partitions.next_number(table("msdos", 1, 2)) == 3
    assert partitions.next_number(table("msdos", 1, 2, 3, 4)) == 5, "four primaries or extended: a logical one"
    assert partitions.next_number(partitions.parse_parted(DOS)) == 6
    assert partitions.next_number(table("msdos", 1, 2, 5)) == 3, "a primary while a slot of 1-4 is free"
    assert partitions.next_number(table("msdos", 1), "extended") == 2
    assert partitions.next_number(table("msdos", 1, 2, 3, 4), "extended") is None


def test_no_table_no_number():
    assert partitions.next_number(Table(label=None)) is None


def test_rounding_covers_a_cylinder():
    # measured: 8 MiB asked on msdos -> 8615936 bytes; 10**7 on GPT -> 10000384
    assert 8615936 - 8 * 2**20 < partitions.ROUNDING and 10000384 - 10**7 < partitions.ROUNDING
