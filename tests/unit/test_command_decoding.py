"""messages.command.decode/encode: the command envelope (docs/contract.md "Commands")."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from messages.command import MAX_BODY, Command, CommandRejected, Undecodable, decode, encode
from messages.pools import PoolDefineArgs
from messages.volumes import VolumeCreateArgs, VolumeUploadArgs


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def command(op: str | None = "volume.create", args: object = None, **envelope: object) -> bytes:
    document: dict = {"id": "cmd-1", **envelope}
    if op is not None:
        document["op"] = op
    if args is not None:
        document["args"] = args
    return body(document)


CREATE = {"pool": "images", "name": "vm1.qcow2", "capacity": 10 * 2**30, "format": "qcow2"}


def rejected(data: bytes) -> CommandRejected:
    with pytest.raises(CommandRejected) as caught:
        decode(data)
    return caught.value


def undecodable(data: bytes) -> Undecodable:
    with pytest.raises(Undecodable) as caught:
        decode(data)
    return caught.value


# --- valid commands ---------------------------------------------------------------------------

def test_volume_create_decodes_to_typed_args():
    cmd = decode(command("volume.create", CREATE, deadline="2026-11-26T10:00:00Z"))
    assert isinstance(cmd, Command)
    assert (cmd.id, cmd.op) == ("cmd-1", "volume.create")
    assert isinstance(cmd.args, VolumeCreateArgs)
    assert cmd.args.capacity == 10 * 2**30 and cmd.args.format == "qcow2"
    assert cmd.deadline == datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    assert cmd.args_dict["prealloc_metadata"] is False  # defaults are filled in
    assert len(cmd.fingerprint) == 64


def test_op_without_args_decodes_with_or_without_args_member():
    a = decode(body({"id": "x", "op": "host.info"}))
    b = decode(body({"id": "x", "op": "host.info", "args": {}}))
    c = decode(body({"id": "x", "op": "host.info", "args": None}))
    assert a.args_dict == b.args_dict == c.args_dict == {}
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert a.deadline is None


def test_pool_define_decodes_nested_source():
    args = {"name": "nfs1", "type": "netfs", "target": {"path": "/var/lib/libvirt/images/nfs1"},
            "source": {"host": [{"name": "nfs.example.com"}], "dir": "/export/images", "format": "nfs"}}
    cmd = decode(command("pool.define", args))
    assert isinstance(cmd.args, PoolDefineArgs)
    assert cmd.args.source.host[0].name == "nfs.example.com"
    assert cmd.args.source.dir == "/export/images"


def test_volume_upload_and_job_cancel_decode():
    upload = decode(command("volume.upload", {"pool": "p", "name": "v", "source": {"path": "/srv/img.raw"}}))
    assert isinstance(upload.args, VolumeUploadArgs)
    assert upload.args.sparse is True and upload.args.offset == 0
    cancel = decode(command("job.cancel", {"id": "other:1.2-3"}))
    assert cancel.args_dict == {"id": "other:1.2-3"}


@pytest.mark.parametrize("deadline, expected", [
    ("2026-11-26T10:00:00+02:00", datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)),
    ("2026-11-26T10:00:00.250Z", datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=timezone.utc)),
    ("2026-11-26 10:00:00-05:30", datetime(2026, 11, 26, 15, 30, tzinfo=timezone.utc)),
])
def test_rfc3339_deadlines_with_offsets(deadline, expected):
    assert decode(command("host.info", deadline=deadline)).deadline == expected


def test_id_at_the_limits_is_usable():
    assert decode(body({"id": "a" * 128, "op": "host.info"})).id == "a" * 128
    assert decode(body({"id": "A.b_c:d-9", "op": "host.info"})).id == "A.b_c:d-9"


# --- undecodable bodies -----------------------------------------------------------------------

def test_body_over_one_mib():
    data = command("host.info", {"pad": "x" * MAX_BODY})
    assert len(data) > MAX_BODY
    error = undecodable(data)
    assert str(len(data)) in error.reason and str(MAX_BODY) in error.reason


def test_body_of_exactly_one_mib_is_read():
    base = command("volume.info", {"pool": "p", "name": "v"})
    padded = base[:-1] + b" " * (MAX_BODY - len(base)) + b"}"
    assert len(padded) == MAX_BODY
    assert decode(padded).op == "volume.info"


def test_body_not_utf8():
    error = undecodable(b'{"id": "a", "op": "host.info", "x": "\xff\xfe"}')
    assert "UTF-8" in error.reason
    assert "byte 37" in error.reason


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"id": "a",}', b"{'id': 'a'}"])
def test_body_not_json(data):
    assert "not JSON" in undecodable(data).reason


def test_body_nested_too_deeply_is_undecodable_not_a_crash():
    data = b'{"id": "a", "op": "host.info", "args": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert "nested too deeply" in undecodable(data).reason


def test_body_with_huge_integer_is_undecodable_not_a_crash():
    data = b'{"id": "a", "op": "volume.create", "args": {"capacity": ' + b"9" * 5000 + b"}}"
    assert "cannot be read" in undecodable(data).reason


@pytest.mark.parametrize("document, kind", [
    ([{"id": "a"}], "array"), ("id", "string"), (42, "number"), (None, "null"), (True, "boolean"),
])
def test_json_that_is_not_an_object(document, kind):
    reason = undecodable(body(document)).reason
    assert f"JSON {kind}" in reason and "not an object" in reason


@pytest.mark.parametrize("document", [{"op": "host.info"}, {"id": None, "op": "host.info"}])
def test_missing_id(document):
    assert "no id" in undecodable(body(document)).reason


@pytest.mark.parametrize("bad_id, shown", [
    (42, "42"), (True, "True"), (["a"], "['a']"), ({"x": 1}, "{'x': 1}"),
    ("", "''"), ("a" * 129, "'aaaa"), ("has space", "'has space'"), ("slash/y", "'slash/y'"),
    ("ünicode", "'ünicode'"), ("new\nline", "'new\\nline'"),
])
def test_unusable_id(bad_id, shown):
    reason = undecodable(body({"id": bad_id, "op": "host.info"})).reason
    assert "command id" in reason and "1-128 characters" in reason
    assert shown in reason


def test_overlong_id_is_cut_in_the_reason():
    reason = undecodable(body({"id": "a" * 5000, "op": "host.info"})).reason
    assert len(reason) < 300


# --- rejected commands: reason names the field and the value ----------------------------------

def test_rejection_carries_id_op_and_a_fingerprint():
    error = rejected(command("volume.create", {**CREATE, "capacity": 0}))
    assert error.command_id == "cmd-1"
    assert error.op == "volume.create"
    assert len(error.fingerprint) == 64
    assert str(error) == error.reason


def test_unknown_op():
    error = rejected(command("volume.explode", {}))
    assert "op 'volume.explode' is not an operation" in error.reason
    assert "volume.create" in error.reason  # lists what is known
    assert error.op is None


@pytest.mark.parametrize("op, shown", [(42, "42"), (["volume.create"], "['volume.create']"), ("", "''")])
def test_op_of_wrong_type(op, shown):
    error = rejected(command(op, {}))
    assert f"op {shown} is not an operation" in error.reason


def test_missing_op():
    error = rejected(command(None, {}))
    assert error.reason == "op is required"


def test_unknown_envelope_field():
    error = rejected(command("volume.create", CREATE, priority=7))
    assert "'priority' is not a field of the command envelope" in error.reason
    assert "7" in error.reason
    assert error.op == "volume.create"


def test_unknown_field_names_are_cut_and_many_problems_counted():
    """Found by test_fuzz_decode.py: a field name of 200 000 characters came back whole in the reason."""
    envelope = rejected(command("host.info", {}, **{"k" * 200_000: 1}))
    assert len(envelope.reason) < 300 and "'kkkk" in envelope.reason and "..." in envelope.reason
    args = rejected(command("volume.info", {"pool": "p", "name": "v", "k" * 200_000: 1}))
    assert args.reason.startswith("args.kkkk") and len(args.reason) < 300
    many = rejected(command("volume.info", {"pool": "p", "name": "v", **{f"f{i}": i for i in range(5000)}}))
    assert "args.f0 is not a field of volume.info" in many.reason
    assert many.reason.endswith("args: 4990 more problems not listed") and len(many.reason) < 2000


def test_unknown_envelope_field_with_an_unhashable_op_is_rejected_not_a_crash():
    error = rejected(command(["volume.create"], CREATE, extra="x"))
    assert "'extra' is not a field" in error.reason and "'x'" in error.reason
    assert error.op is None


@pytest.mark.parametrize("args, kind, shown", [
    (["pool", "images"], "array", "['pool', 'images']"),
    ("pool=images", "string", "'pool=images'"),
    (17, "number", "17"),
    (True, "boolean", "True"),
])
def test_args_not_an_object(args, kind, shown):
    error = rejected(command("volume.create", args))
    assert error.reason.startswith("args must be a JSON object")
    assert kind in error.reason and shown in error.reason


def test_unknown_args_field():
    error = rejected(command("volume.create", {**CREATE, "colour": "blue"}))
    assert "args.colour is not a field of volume.create" in error.reason
    assert "'blue'" in error.reason


def test_unknown_nested_args_field():
    args = {"name": "p", "type": "dir", "target": {"path": "/srv/p", "owner": 0}}
    error = rejected(command("pool.define", args))
    assert "args.target.owner is not a field" in error.reason and "(got 0)" in error.reason


def test_missing_required_arg():
    args = {k: v for k, v in CREATE.items() if k != "capacity"}
    assert rejected(command("volume.create", args)).reason == "args.capacity is required"


@pytest.mark.parametrize("field", ["pool", "name"])
@pytest.mark.parametrize("value", ["a/b", "..", ".", "/abs", "-dash", "", "x" * 256, "sp ace", "tab\t"])
def test_bad_resource_names(field, value):
    error = rejected(command("volume.create", {**CREATE, field: value}))
    assert f"args.{field}" in error.reason
    assert repr(value)[:40] in error.reason


@pytest.mark.parametrize("capacity, message", [
    (0, "greater than or equal to 1"),
    (-1, "greater than or equal to 1"),
    (-10737418240, "greater than or equal to 1"),
    ("10737418240", "valid integer"),
    ("10G", "valid integer"),
    (True, "valid integer"),
    (False, "valid integer"),
    (1.5, "valid integer"),
    (1024.0, "valid integer"),
    (2**63, "less than or equal to"),
    (None, "valid integer"),
])
def test_bad_capacity(capacity, message):
    error = rejected(command("volume.create", {**CREATE, "capacity": capacity}))
    assert "args.capacity" in error.reason
    assert message in error.reason
    assert f"(got {capacity!r})" in error.reason


def test_every_problem_is_named():
    error = rejected(command("volume.create", {"pool": "a/b", "name": "..", "capacity": -5}))
    for part in ("args.pool", "'a/b'", "args.name", "'..'", "args.capacity", "-5"):
        assert part in error.reason


def test_model_rule_is_reported_for_args():
    error = rejected(command("volume.create", {**CREATE, "allocation": CREATE["capacity"] + 1}))
    assert error.reason.startswith("args: ")
    assert str(CREATE["capacity"] + 1) in error.reason


@pytest.mark.parametrize("deadline", [
    "2026-11-26T10:00:00",        # no time zone
    "2026-11-26",                 # a date
    "2026-11-26T10:00Z",          # no seconds
    "tomorrow",
    "2026-13-01T00:00:00Z",       # month 13
    "2026-11-26T25:00:00Z",
    "1700000000",                 # a Unix time as a string
    1700000000,                   # a number
    True,
    ["2026-11-26T10:00:00Z"],
    "",
])
def test_bad_deadline(deadline):
    error = rejected(command("volume.create", CREATE, deadline=deadline))
    assert error.reason.startswith(f"deadline {deadline!r}")
    assert "RFC 3339" in error.reason
    assert error.op == "volume.create"


def test_null_deadline_means_none():
    assert decode(command("host.info", deadline=None)).deadline is None


# --- fingerprints ----------------------------------------------------------------------------

def test_fingerprint_same_for_defaults_spelled_out_or_omitted():
    short = decode(command("volume.create", {"pool": "p", "name": "v", "capacity": 1}))
    spelled = decode(command("volume.create", {"pool": "p", "name": "v", "capacity": 1,
                                               "prealloc_metadata": False, "backing": None,
                                               "format": None}))
    assert short.fingerprint == spelled.fingerprint


def test_fingerprint_same_whatever_the_key_order_or_id():
    a = decode(body({"id": "one", "op": "volume.wipe", "args": {"pool": "p", "name": "v", "algorithm": "zero"}}))
    b = decode(body({"args": {"name": "v", "algorithm": "zero", "pool": "p"}, "op": "volume.wipe", "id": "two"}))
    c = decode(body({"id": "three", "op": "volume.wipe", "args": {"pool": "p", "name": "v"}}))
    assert a.fingerprint == b.fingerprint == c.fingerprint


def test_fingerprint_same_for_equivalent_modes():
    def define(mode):
        return decode(command("pool.define", {"name": "p", "type": "dir",
                                              "target": {"path": "/srv/p", "permissions": {"mode": mode}}}))
    assert define("755").fingerprint == define("0755").fingerprint


@pytest.mark.parametrize("change", [
    {"capacity": 2},
    {"name": "w"},
    {"pool": "q"},
    {"format": "qcow2"},
    {"allocation": 1},
    {"prealloc_metadata": True, "format": "qcow2"},
])
def test_fingerprint_differs_when_args_differ(change):
    base = {"pool": "p", "name": "v", "capacity": 1}
    assert decode(command("volume.create", base)).fingerprint != \
        decode(command("volume.create", {**base, **change})).fingerprint


def test_fingerprint_differs_between_ops_with_the_same_args():
    args = {"pool": "p", "name": "v"}
    assert decode(command("volume.info", args)).fingerprint != decode(command("volume.delete", args)).fingerprint


def test_rejected_fingerprint_tracks_the_raw_args():
    a = rejected(command("volume.create", {**CREATE, "capacity": 0}))
    b = rejected(command("volume.create", {**CREATE, "capacity": 0}))
    c = rejected(command("volume.create", {**CREATE, "capacity": -1}))
    assert a.fingerprint == b.fingerprint != c.fingerprint


# --- encode ----------------------------------------------------------------------------------

def test_encode_round_trips_a_model():
    args = VolumeCreateArgs(pool="p", name="v.qcow2", capacity=5 * 2**30, format="qcow2",
                            backing={"pool": "base", "name": "debian.qcow2"})
    deadline = datetime(2026, 11, 26, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    cmd = decode(encode("id-7", "volume.create", args, deadline))
    assert (cmd.id, cmd.op) == ("id-7", "volume.create")
    assert cmd.args == args
    assert cmd.deadline == deadline


def test_encode_round_trips_a_dict_and_no_args():
    cmd = decode(encode("id-8", "pool.define", {"name": "d", "type": "dir", "target": {"path": "/srv/d"}}))
    assert cmd.args.target.path == "/srv/d"
    empty = decode(encode("id-9", "host.info"))
    assert empty.args_dict == {} and empty.deadline is None


def test_encode_of_a_model_with_optional_fields_left_out_fingerprints_the_same():
    args = {"domain": "vm1", "pool": "p", "name": "v", "target": "vdb"}
    direct = decode(command("volume.attach", args))
    via_model = decode(encode("cmd-1", "volume.attach", direct.args))
    assert via_model.args == direct.args
    assert via_model.fingerprint == direct.fingerprint


def test_encode_refuses_a_naive_deadline():
    with pytest.raises(ValueError, match="time zone"):
        encode("id", "host.info", deadline=datetime(2026, 11, 26, 10, 0))
