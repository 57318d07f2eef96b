"""messages.schema.json_schema: the published JSON Schema agrees with the models and the decoder."""

from __future__ import annotations

import json

import jsonschema
import pytest

from messages.command import CommandRejected, Undecodable, decode
from messages.operations import OPERATIONS
from messages.schema import json_schema


@pytest.fixture(scope="module")
def schema() -> dict:
    return json_schema()


def validator(schema: dict, definition: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"})


def test_the_schema_is_json_and_a_valid_2020_12_schema(schema):
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_it_has_command_result_and_cloudevent_definitions(schema):
    assert {"Command", "Result", "CloudEvent"} <= set(schema["$defs"])
    refs = {alt["$ref"] for alt in schema["anyOf"]}
    assert refs == {"#/$defs/Command", "#/$defs/Result", "#/$defs/CloudEvent"}


def test_the_command_has_one_variant_per_operation_discriminated_by_op(schema):
    command = schema["$defs"]["Command"]
    assert command["discriminator"]["propertyName"] == "op"
    mapping = command["discriminator"]["mapping"]
    assert set(mapping) == set(OPERATIONS)
    variants = command.get("oneOf") or command.get("anyOf")
    assert len(variants) == len(OPERATIONS)
    for op, ref in mapping.items():
        variant = schema["$defs"][ref.removeprefix("#/$defs/")]
        assert variant["properties"]["op"]["const"] == op
        assert variant["additionalProperties"] is False
        assert {"id", "op", "args"} <= set(variant["properties"])


VALID = [
    {"id": "6f1c-1", "op": "volume.create",
     "args": {"pool": "images", "name": "vm1.qcow2", "capacity": 10737418240, "format": "qcow2"},
     "deadline": "2026-11-26T10:00:00Z"},
    {"id": "c2", "op": "pool.define",
     "args": {"name": "images", "type": "dir", "target": {"path": "/var/lib/libvirt/images"}, "start": True}},
    {"id": "c3", "op": "volume.upload",
     "args": {"pool": "images", "name": "vm1", "source": {"url": "https://images.example.com/a.qcow2"}}},
    {"id": "c4", "op": "host.info", "args": {}},
    {"id": "c5", "op": "job.cancel", "args": {"id": "c2"}},
]

INVALID = [
    {"id": "c6", "op": "volume.explode", "args": {}},                                      # unknown op
    {"id": "c7", "op": "volume.create", "args": {"pool": "images", "name": "v", "capacity": 1, "colour": "red"}},
    {"id": "c8", "op": "volume.create", "args": {"pool": "images", "name": "v"}},          # no capacity
    {"id": "c9", "op": "volume.create", "args": {"pool": "images", "name": "v", "capacity": "10G"}},
    {"id": "c10", "op": "volume.create", "args": {"pool": "images", "name": "..", "capacity": 1}},
    {"id": "c11", "op": "pool.stop", "args": {"name": "images"}, "priority": 5},           # envelope field
    {"id": "bad id!", "op": "pool.stop", "args": {"name": "images"}},
]


@pytest.mark.parametrize("document", VALID, ids=lambda d: d["op"])
def test_real_commands_validate_and_decode(schema, document):
    validator(schema, "Command").validate(document)
    decode(json.dumps(document).encode())  # the decoder agrees


@pytest.mark.parametrize("document", INVALID, ids=lambda d: d["id"])
def test_bad_commands_fail_validation_and_decoding(schema, document):
    assert list(validator(schema, "Command").iter_errors(document)), "the schema accepted a bad command"
    with pytest.raises((CommandRejected, Undecodable)):
        decode(json.dumps(document).encode())


def test_a_contract_result_validates(schema):
    result = {"id": "6f1c", "op": "volume.create", "host": "kvm-01", "status": "succeeded",
              "result": {"pool": "images", "name": "vm1.qcow2", "changed": True}, "error": None,
              "attempts": 1, "duplicate": False, "received_at": "2026-11-26T07:00:00Z",
              "started_at": "2026-11-26T07:00:00.100Z", "finished_at": "2026-11-26T07:00:01Z"}
    validator(schema, "Result").validate(result)
    failed = {**result, "status": "failed", "result": None,
              "error": {"code": "busy", "message": "pool busy", "retryable": True, "libvirt": None}}
    validator(schema, "Result").validate(failed)
    assert list(validator(schema, "Result").iter_errors({**failed, "status": "exploded"}))
    assert list(validator(schema, "Result").iter_errors(
        {**failed, "error": {**failed["error"], "code": "oops"}}))


def test_a_contract_event_validates(schema):
    event = {"specversion": "1.0", "id": "e1", "source": "/storage-worker/kvm-01", "type": "storage.pool.started",
             "subject": "pools/images", "time": "2026-11-26T07:00:00.123Z",
             "datacontenttype": "application/json", "host": "kvm-01", "sequence": "42", "commandid": "6f1c",
             "data": {"pool": {"name": "images", "uuid": "8cf8d894-e430-45c3-b920-7f2ead21bcda", "type": "dir",
                               "state": "running", "persistent": True, "autostart": False,
                               "capacity": 100, "allocation": 10, "available": 90,
                               "target_path": "/var/lib/libvirt/images"}}}
    errors = list(validator(schema, "CloudEvent").iter_errors(event))
    assert not errors, [e.message for e in errors]
    assert list(validator(schema, "CloudEvent").iter_errors({**event, "specversion": "0.3"}))


def test_unknown_args_rejected_by_schema_are_rejected_by_the_decoder_too():
    with pytest.raises(CommandRejected, match="colour"):
        decode(json.dumps(INVALID[1]).encode())
