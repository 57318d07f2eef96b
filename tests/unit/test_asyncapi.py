"""messages.asyncapi: the AsyncAPI 3.0 document of the contract is current, valid and complete."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest
from jsonschema.validators import validator_for

from messages.asyncapi import asyncapi_document
from messages.events import DATA_MODELS, EventType
from messages.operations import OPERATIONS
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"
# Put there by scripts/lib/bootstrap.sh (ensure_asyncapi_schema) from the npm package @asyncapi/specs.
OFFICIAL_SCHEMA = Path(sys.prefix) / "share" / "asyncapi" / "3.0.0.json"


@pytest.fixture(scope="module")
def document() -> dict:
    return asyncapi_document()


def test_the_committed_document_is_current(document):
    assert COMMITTED.is_file(), "docs/asyncapi.json is missing: run scripts/gen-asyncapi"
    text = COMMITTED.read_text()
    assert json.loads(text) == document, "docs/asyncapi.json is out of date: run scripts/gen-asyncapi"
    assert text == json.dumps(document, indent=2, sort_keys=False) + "\n", \
        "docs/asyncapi.json is not formatted as generated: run scripts/gen-asyncapi"


def test_the_cli_prints_it():
    done = subprocess.run([sys.executable, "-m", "worker", "schema", "--asyncapi"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == asyncapi_document()
    plain = subprocess.run([sys.executable, "-m", "worker", "schema"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_it_validates_against_the_official_asyncapi_3_0_0_schema(document):
    require(OFFICIAL_SCHEMA.is_file(),
            f"the official AsyncAPI 3.0.0 JSON Schema is not at {OFFICIAL_SCHEMA}: scripts/test (bootstrap) "
            f"fetches it with npm from @asyncapi/specs")
    official = json.loads(OFFICIAL_SCHEMA.read_text())
    assert official["$schema"].startswith("http://json-schema.org/draft-07/schema")
    cls = validator_for(official)
    assert cls is jsonschema.Draft7Validator
    validator = cls(official)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:10])
    # The validation has teeth: a wrong action and a wrong exchange type are caught.
    broken = json.loads(json.dumps(document))
    broken["operations"]["sendCommand"]["action"] = "publish"
    broken["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] = "round-robin"
    assert len(list(validator.iter_errors(broken))) == 2


def _refs(node, path="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            else:
                yield from _refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _refs(value, f"{path}/{index}")


def _resolve(document: dict, ref: str):
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[part]
    return node


def test_every_ref_resolves(document):
    refs = list(_refs(document))
    assert len(refs) > 100
    unresolved = []
    for where, ref in refs:
        try:
            _resolve(document, ref)
        except (KeyError, IndexError, TypeError, AssertionError):
            unresolved.append(f"{where}: {ref}")
    assert not unresolved, unresolved


def test_operation_messages_belong_to_their_channels(document):
    for name, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
    reply = document["operations"]["sendCommand"]["reply"]
    for message in reply["messages"]:
        assert message["$ref"].startswith(reply["channel"]["$ref"] + "/messages/")


def _messages_by_name(document: dict) -> dict[str, dict]:
    return {message["name"]: message for message in document["components"]["messages"].values()}


def test_every_operation_and_event_type_is_a_message(document):
    by_name = _messages_by_name(document)
    missing_ops = sorted(set(OPERATIONS) - set(by_name))
    assert not missing_ops, f"operations without a message: {missing_ops}"
    missing_events = sorted({t.value for t in EventType} - set(by_name))
    assert not missing_events, f"event types without a message: {missing_events}"
    assert "result" in by_name
    commands = {ref["$ref"].rsplit("/", 1)[-1] for ref in document["operations"]["sendCommand"]["messages"]}
    assert {document["components"]["messages"][key]["name"] for key in commands} == set(OPERATIONS)
    events = {ref["$ref"].rsplit("/", 1)[-1] for ref in document["operations"]["receiveEvents"]["messages"]}
    assert {document["components"]["messages"][key]["name"] for key in events} == {t.value for t in EventType}


def test_command_payloads_fix_the_op_and_type_the_args(document):
    schemas = document["components"]["schemas"]
    for op, message in _messages_by_name(document).items():
        if op not in OPERATIONS:
            continue
        payload = _resolve(document, message["payload"]["$ref"])
        assert payload["properties"]["op"]["const"] == op
        args = payload["properties"]["args"]
        assert args["$ref"] == f"#/components/schemas/{OPERATIONS[op].args.__name__}"
        assert OPERATIONS[op].args.__name__ in schemas


def test_event_payloads_are_cloudevents_with_typed_data(document):
    for event_type in EventType:
        message = _messages_by_name(document)[event_type.value]
        assert message["contentType"] == "application/cloudevents+json"
        payload = _resolve(document, message["payload"]["$ref"])
        assert payload["properties"]["type"]["const"] == event_type.value
        assert payload["properties"]["data"]["$ref"] == \
            f"#/components/schemas/{DATA_MODELS[event_type].__name__}"
        assert payload["properties"]["specversion"]["const"] == "1.0"


def _payload_validator(document: dict, message_key: str) -> jsonschema.Draft202012Validator:
    ref = document["components"]["messages"][message_key]["payload"]["$ref"]
    return jsonschema.Draft202012Validator({"components": document["components"], "$ref": ref})


def test_a_real_event_matches_its_message_and_not_another(document):
    pool = {"name": "images", "uuid": "5f1c9c1e-5b0e-4d7e-9a37-3c1c3b0b7a11", "type": "dir", "state": "running",
            "persistent": True, "autostart": False, "capacity": 100, "allocation": 10, "available": 90,
            "target_path": "/var/lib/libvirt/images"}
    event = {"specversion": "1.0", "id": "e1", "source": "/storage-worker/kvm-01", "type": "storage.pool.started",
             "subject": "pools/images",
             "time": datetime(2026, 11, 26, 7, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z"),
             "datacontenttype": "application/json", "host": "kvm-01", "sequence": "42", "commandid": "c1",
             "data": {"pool": pool}}
    from messages.events import CloudEvent

    CloudEvent.model_validate(event)  # the model agrees it is an event
    keys = {message["name"]: key for key, message in document["components"]["messages"].items()}
    _payload_validator(document, keys["storage.pool.started"]).validate(event)
    assert list(_payload_validator(document, keys["storage.volume.created"]).iter_errors(event))
    assert list(_payload_validator(document, keys["storage.pool.started"]).iter_errors(
        {**event, "data": {"pool": "images"}}))


def test_a_real_command_matches_its_message(document):
    keys = {message["name"]: key for key, message in document["components"]["messages"].items()}
    command = {"id": "6f1c-1", "op": "volume.create",
               "args": {"pool": "images", "name": "vm1.qcow2", "capacity": 10737418240, "format": "qcow2"}}
    _payload_validator(document, keys["volume.create"]).validate(command)
    assert list(_payload_validator(document, keys["volume.create"]).iter_errors(
        {**command, "args": {**command["args"], "colour": "red"}}))
    assert list(_payload_validator(document, keys["volume.delete"]).iter_errors(command))


def test_topology_names_and_bindings(document):
    channels = document["channels"]
    assert channels["commands"]["address"] == "storage.commands"
    assert channels["commands"]["bindings"]["amqp"]["exchange"]["type"] == "direct"
    assert channels["commands"]["bindings"]["amqp"]["exchange"]["durable"] is True
    assert channels["commandQueue"]["address"] == "storage.commands.{host}"
    assert "host" in channels["commandQueue"]["parameters"]
    assert "quorum" in channels["commandQueue"]["description"].lower()
    assert channels["results"]["bindings"]["amqp"]["exchange"] == {
        "name": "storage.results", "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"}
    assert channels["events"]["bindings"]["amqp"]["exchange"]["name"] == "storage.events"
    assert channels["deadLetters"]["bindings"]["amqp"]["exchange"]["name"] == "storage.dlx"
    assert channels["deadQueue"]["bindings"]["amqp"]["queue"]["name"] == "storage.dead"
    assert {s["protocol"]: s["host"] for s in document["servers"].values()} == {
        "amqp": "localhost:5672", "amqps": "localhost:5671"}
    actions = {name: op["action"] for name, op in document["operations"].items()}
    assert actions["sendCommand"] == "send"
    assert actions["receiveResults"] == actions["receiveEvents"] == "receive"


def test_the_event_stream_is_a_channel_with_every_event(document):
    stream = document["channels"]["eventStream"]
    assert stream["address"] == "storage.events.stream" and stream["x-queue-type"] == "stream"
    assert stream["bindings"]["amqp"]["queue"]["durable"] is True
    assert set(stream["messages"]) == set(document["channels"]["events"]["messages"])
    for words in ("x-stream-offset", "EVENT_STREAM_MAX_AGE", "EVENT_STREAM_MAX_BYTES", "basic.qos"):
        assert words in stream["description"]
    assert document["operations"]["replayEvents"]["action"] == "receive"
