"""Property tests of the decoder (messages.command.decode): whatever arrives — any bytes, any JSON,
any command document made from the contract's models — decoding gives a command, or a rejection or an
undecodable with a reason a person can act on; no other exception ever escapes."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from messages.command import MAX_BODY, Command, CommandRejected, Undecodable, decode, encode
from messages.operations import OPERATIONS
from tests.strategies import OPS, bodies, envelopes, json_values, model_args

# A reason names what was wrong; the value it quotes is cut (messages.errors.shown), so the reason
# stays readable whatever was sent. One sentence per problem, a few problems at most per command.
MAX_REASON = 4096


def outcome(body: bytes) -> Command | CommandRejected | Undecodable:
    try:
        return decode(body)
    except (CommandRejected, Undecodable) as refusal:
        return refusal


def assert_reasonable(result: object) -> None:
    if isinstance(result, Command):
        return
    reason = result.reason
    assert isinstance(reason, str) and reason.strip(), f"no reason: {reason!r}"
    assert len(reason) <= MAX_REASON, f"a reason of {len(reason)} characters: {reason[:200]!r}..."
    if isinstance(result, CommandRejected):
        assert isinstance(result.command_id, str) and result.command_id
        assert result.op is None or result.op in OPERATIONS
        assert len(result.fingerprint) == 64


@given(bodies())
@example(b"")
@example(b"\xef\xbb\xbf{}")
@example(b'{"id": "a", "id": 7}')
@example(b'{"id": "x", "op": "host.info", "args": {"": 1}}')
@example(b"[" * 100_000)
@example(b'{"id": "x", "op": "volume.info", "args": {"pool": "p", "name": "v"}, "' + b"k" * 5_000 + b'": 1}')
@example(b'{"id": "x", "op": "volume.info", "args": {"pool": "p", "name": "v", "' + b"k" * 5_000 + b'": 1}}')
def test_any_body_decodes_or_is_refused_with_a_reason(body):
    assert_reasonable(outcome(body))


@given(json_values())
def test_any_json_value_decodes_or_is_refused_with_a_reason(value):
    assert_reasonable(outcome(json.dumps(value).encode()))


@given(envelopes())
def test_any_command_document_decodes_or_is_refused_with_a_reason(document):
    assert_reasonable(outcome(json.dumps(document).encode()))


@given(st.sampled_from(OPS).flatmap(lambda op: st.tuples(st.just(op), model_args(op))))
def test_args_from_the_models_are_accepted_or_refused_naming_the_field(op_and_args):
    op, args = op_and_args
    result = outcome(json.dumps({"id": "cmd-1", "op": op, "args": args}).encode())
    assert not isinstance(result, Undecodable), result.reason
    assert_reasonable(result)
    if isinstance(result, CommandRejected):
        # It says where: the field ("args.capacity: ..."), or the rule of the whole args ("args: a
        # dir pool needs target.path").
        assert result.reason.startswith("args"), f"a reason that names no field: {result.reason!r}"
    else:
        assert result.op == op
        again = decode(encode("cmd-1", op, result.args))
        assert again.fingerprint == result.fingerprint, "what a client re-encodes is the same command"


@given(st.text(min_size=1, max_size=8).filter(lambda key: key not in ("id", "op", "args", "deadline")),
       st.integers(0, MAX_BODY))
def test_an_unknown_envelope_field_is_named_however_long(key, repeat):
    long_key = key * min(repeat, 100_000 // len(key) + 1)
    body = json.dumps({"id": "x", "op": "host.info", long_key: 1}).encode()
    result = outcome(body)
    assert isinstance(result, CommandRejected) or isinstance(result, Undecodable)
    assert_reasonable(result)
