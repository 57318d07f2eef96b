"""worker.ops.cli.parse_pairs (the key=value arguments of `storage-worker call`) and messages.sizes."""

from __future__ import annotations

import pytest

from messages.sizes import parse_size
from worker.ops.cli import build_parser, parse_pairs


def test_plain_pairs_become_args():
    assert parse_pairs(["pool=images", "name=vm1.qcow2", "format=qcow2"]) == {
        "pool": "images", "name": "vm1.qcow2", "format": "qcow2"}


def test_dotted_keys_nest():
    assert parse_pairs(["target.path=/var/lib/libvirt/images/p", "target.permissions.mode=0755",
                        "source.dir=/export"]) == {
        "target": {"path": "/var/lib/libvirt/images/p", "permissions": {"mode": "0755"}},
        "source": {"dir": "/export"}}


def test_values_are_json_where_they_parse():
    args = parse_pairs(["build=true", "start=false", "port=3260", "autostart=null",
                        'backing={"pool": "base", "name": "b.qcow2"}', 'hosts=["a", "b"]'])
    assert args == {"build": True, "start": False, "port": 3260, "autostart": None,
                    "backing": {"pool": "base", "name": "b.qcow2"}, "hosts": ["a", "b"]}


def test_size_fields_take_units():
    args = parse_pairs(["capacity=10G", "allocation=512M", "offset=4K", "length=1048576"])
    assert args == {"capacity": 10737418240, "allocation": 536870912, "offset": 4096, "length": 1048576}


def test_nested_size_fields_take_units_too():
    assert parse_pairs(["source.length=2M"]) == {"source": {"length": 2 * 2**20}}


def test_other_fields_keep_size_like_text():
    assert parse_pairs(["name=10G", "pool=512M"]) == {"name": "10G", "pool": "512M"}


def test_a_value_may_contain_equals_signs():
    assert parse_pairs(["source.url=https://example.com/a?b=c"]) == {"source": {"url": "https://example.com/a?b=c"}}


def test_an_empty_value_is_an_empty_string():
    assert parse_pairs(["name="]) == {"name": ""}


def test_pairs_merge_over_the_json_base():
    base = {"pool": "images", "source": {"path": "/a"}}
    assert parse_pairs(["name=v", "source.offset=1K"], base) == {
        "pool": "images", "name": "v", "source": {"path": "/a", "offset": 1024}}
    assert parse_pairs(["pool=other"], base)["pool"] == "other"


@pytest.mark.parametrize("pair", ["novalue", "=5", ""])
def test_a_pair_without_key_or_equals_is_refused(pair):
    with pytest.raises(ValueError) as caught:
        parse_pairs([pair])
    assert repr(pair) in str(caught.value)


def test_nesting_under_a_value_is_refused():
    with pytest.raises(ValueError) as caught:
        parse_pairs(["target=/x", "target.path=/y"])
    assert "'target.path=/y'" in str(caught.value) and "'target'" in str(caught.value)


def test_a_bad_size_is_refused_naming_the_value():
    with pytest.raises(ValueError) as caught:
        parse_pairs(["capacity=ten"])
    assert "'ten'" in str(caught.value)


def test_the_call_parser_collects_pairs():
    ns = build_parser().parse_args(["call", "volume.create", "pool=images", "capacity=1G", "--timeout", "5"])
    assert (ns.op, ns.pairs, ns.timeout) == ("volume.create", ["pool=images", "capacity=1G"], 5.0)
    assert parse_pairs(ns.pairs) == {"pool": "images", "capacity": 2**30}


# --- messages.sizes.parse_size ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1", 1), ("1024", 1024), ("10G", 10 * 2**30), ("512M", 512 * 2**20), ("4k", 4096),
    ("1.5T", 3 * 2**39), ("1P", 2**50), ("10GiB", 10 * 2**30), ("10GB", 10 * 2**30), ("10g", 10 * 2**30),
    ("100B", 100), (" 2 M ", 2 * 2**20), ("0.5K", 512),
    ("9007199254740993", 9007199254740993),  # above 2**53: exact, not rounded through a float
    ("123456789012345678", 123456789012345678),
])
def test_parse_size(text, expected):
    value = parse_size(text)
    assert value == expected and isinstance(value, int)


def test_parse_size_of_a_huge_number_is_an_int_not_an_overflow():
    assert parse_size("9" * 400) == int("9" * 400)  # out of range is for the args model to say


@pytest.mark.parametrize("text", ["", " ", "G", "-1", "-1G", "1.5", "0.1K", "10X", "10 GB extra", "1e3",
                                  "1,5G", "0x10", "nan", "inf"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError) as caught:
        parse_size(text)
    assert repr(text) in str(caught.value)
