"""AsyncAPI 3.0 document of the whole contract (docs/contract.md), generated from the models.

The document describes the contract from a control plane's side: it sends commands to the commands
exchange and receives results and events. Names are the defaults (prefix `storage`); every exchange
and queue name changes with the worker's PREFIX setting (`STORAGE_WORKER_PREFIX`).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Literal

from pydantic import create_model
from pydantic.json_schema import models_json_schema

from messages.events import CONTENT_TYPE as EVENT_CONTENT_TYPE
from messages.events import DATA_MODELS, CloudEvent, EventType
from messages.operations import OPERATIONS
from messages.results import Result
from messages.schema import command_models
from messages.topology import Topology

ASYNCAPI_VERSION = "3.0.0"
PACKAGE = "libvirt-storage-worker"
DEFAULT_PREFIX = "storage"
AMQP_BINDING_VERSION = "0.3.0"
JSON = "application/json"
_REF = "#/components/schemas/{model}"
_PREFIX_NOTE = (f"Names are the defaults: every exchange and queue name starts with the worker's PREFIX setting "
                f"(STORAGE_WORKER_PREFIX, default `{DEFAULT_PREFIX}`).")


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "1.0.0"


def _camel(dotted: str) -> str:
    return "".join(part.capitalize() for part in dotted.replace("-", ".").replace("_", ".").split("."))


def event_models() -> dict[EventType, type[CloudEvent]]:
    """One CloudEvent model per event type: the envelope with `type` fixed and `data` typed."""
    return {
        event_type: create_model(
            f"{_camel(event_type.suffix)}Event",
            __base__=CloudEvent,
            __doc__=f"CloudEvent {event_type.value}, routing key <host>.{event_type.suffix}",
            type=(Literal[event_type.value], ...),  # type: ignore[valid-type]
            data=(DATA_MODELS[event_type], ...),
        )
        for event_type in EventType
    }


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)}


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {"is": "routingKey",
            "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING_VERSION}


def _queue(name: str) -> dict[str, Any]:
    return {"is": "queue",
            "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING_VERSION}


def _schemas(commands: dict[str, type], events: dict[EventType, type]) -> dict[str, Any]:
    models: list[tuple[type, Literal["validation", "serialization"]]] = [
        (model, "validation") for model in commands.values()]
    models += [(Result, "serialization"), (CloudEvent, "serialization")]
    models += [(model, "serialization") for model in events.values()]
    results = {op.result: None for op in OPERATIONS.values()}  # ordered, without repeats
    models += [(model, "serialization") for model in results]
    _, definitions = models_json_schema(models, ref_template=_REF)
    return definitions.get("$defs", {})


def _command_messages(commands: dict[str, type]) -> dict[str, Any]:
    messages = {}
    for op, model in commands.items():
        operation = OPERATIONS[op]
        notes = []
        if operation.long_running:
            notes.append("Long-running: publishes storage.job.progress events while it runs.")
        if operation.cancellable:
            notes.append("Stops promptly on job.cancel (status cancelled).")
        messages[model.__name__] = {
            "name": op,
            "title": op,
            "summary": operation.summary,
            "description": " ".join(
                [f"Command `{op}`: publish to the commands exchange with the worker's host id as routing key. "
                 f"Its result's `result` field is a {operation.result.__name__}."] + notes),
            "contentType": JSON,
            "correlationId": {"description": "Echoed on the result; defaults to the command id",
                              "location": "$message.header#/correlation_id"},
            "payload": {"$ref": _REF.format(model=model.__name__)},
            "x-result-payload": {"$ref": _REF.format(model=operation.result.__name__)},
        }
    return messages


def _result_message() -> dict[str, Any]:
    per_op = ", ".join(f"{name} -> {op.result.__name__}" for name, op in OPERATIONS.items())
    return {
        "name": "result",
        "title": "Result",
        "summary": "The one terminal result of a command",
        "description": "Published to the results exchange with routing key <host>.<op>.<status> "
                       "(<host>.unknown.rejected for a body that is not a command) and, when the command had "
                       "reply_to, to that queue with the command's correlation_id. A repeated command id gets "
                       "the stored result with duplicate=true, on reply_to only. `result` per operation: "
                       + per_op + ".",
        "contentType": JSON,
        "correlationId": {"description": "The command's correlation_id, or its id",
                          "location": "$message.header#/correlation_id"},
        "payload": {"$ref": _REF.format(model="Result")},
    }


def _event_messages(events: dict[EventType, type]) -> dict[str, Any]:
    return {
        model.__name__: {
            "name": event_type.value,
            "title": event_type.value,
            "summary": f"CloudEvent {event_type.value} (data: {DATA_MODELS[event_type].__name__})",
            "description": f"Structured-mode CloudEvents 1.0 on the events exchange, routing key "
                           f"<host>.{event_type.suffix}; AMQP message_id = event id, type = event type.",
            "contentType": EVENT_CONTENT_TYPE,
            "payload": {"$ref": _REF.format(model=model.__name__)},
            "bindings": {"amqp": {"messageType": event_type.value, "bindingVersion": AMQP_BINDING_VERSION}},
        }
        for event_type, model in events.items()
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": "dead-letter",
        "title": "Dead letter",
        "summary": "A command the worker could not decode, or one over the queue's delivery limit",
        "description": "The original message body and properties, unchanged: anything at all, which is "
                       "why it was dead-lettered. `storage-worker dead list|replay` reads and re-sends them.",
        "headers": {
            "type": "object",
            "properties": {
                "x-storage-worker-reason": {"type": "string",
                                            "description": "Why the worker dead-lettered the message"},
                "x-death": {"type": "array", "items": {"type": "object"},
                            "description": "RabbitMQ's dead-letter history"},
            },
        },
        "payload": {"description": "The original body, as sent"},
    }


def _channels(topology: Topology, commands: dict, result: dict, events: dict, dead: dict) -> dict[str, Any]:
    host_queue = Topology(prefix=topology.prefix, host="{host}").command_queue

    def refs(messages: dict) -> dict[str, Any]:
        return {key: _ref("components", "messages", key) for key in messages}

    return {
        "commands": {
            "address": topology.commands_exchange,
            "title": "Commands exchange",
            "summary": "Where control planes publish commands",
            "description": "Direct exchange, durable, declared by the worker. Routing key = the worker's host id "
                           "(HOST_ID). Publish persistent (delivery_mode=2) with content_type=application/json; "
                           "optional reply_to, correlation_id, user_id, expiration. Body at most 1 MiB. "
                           + _PREFIX_NOTE,
            "messages": refs(commands),
            "bindings": {"amqp": _exchange(topology.commands_exchange, "direct")},
            "x-routing-key": "{host}",
        },
        "commandQueue": {
            "address": host_queue,
            "title": "Per-host command queue",
            "summary": "The queue one worker (host id) consumes",
            "description": f"Quorum queue (QUEUE_TYPE=classic selectable), durable, bound to "
                           f"{topology.commands_exchange} with key <host>, x-dead-letter-exchange="
                           f"{topology.dead_letter_exchange}, delivery limit (DELIVERY_LIMIT), single active "
                           f"consumer for hot standby (SINGLE_ACTIVE_CONSUMER). " + _PREFIX_NOTE,
            "parameters": {"host": {"description": "The worker's host id (HOST_ID, default the short hostname)",
                                    "examples": ["kvm-01"]}},
            "messages": refs(commands),
            "bindings": {"amqp": _queue(host_queue)},
            "x-queue-type": "quorum",
        },
        "replies": {
            "address": None,
            "title": "reply_to queue",
            "summary": "The queue named in a command's reply_to",
            "description": "A queue of the control plane's, or amq.rabbitmq.reply-to. Gets the result with the "
                           "command's correlation_id, duplicates included.",
            "messages": refs(result),
        },
        "results": {
            "address": topology.results_exchange,
            "title": "Results exchange",
            "summary": "Every terminal result",
            "description": "Topic exchange, durable, declared by the worker. Routing key <host>.<op>.<status>, "
                           "e.g. kvm-01.volume.create.succeeded; status is succeeded, failed, rejected or "
                           "cancelled. " + _PREFIX_NOTE,
            "messages": refs(result),
            "bindings": {"amqp": _exchange(topology.results_exchange, "topic")},
            "x-routing-key": "{host}.{op}.{status}",
        },
        "events": {
            "address": topology.events_exchange,
            "title": "Events exchange",
            "summary": "State changes of pools, volumes, jobs and the worker, as CloudEvents",
            "description": "Topic exchange, durable, declared by the worker. Routing key <host>.<event-suffix>, "
                           "the suffix being the event type without `storage.` (kvm-01.pool.started, "
                           "kvm-01.worker.libvirt.reconnected). " + _PREFIX_NOTE,
            "messages": refs(events),
            "bindings": {"amqp": _exchange(topology.events_exchange, "topic")},
            "x-routing-key": "{host}.{event-suffix}",
        },
        "eventStream": {
            "address": topology.event_stream,
            "title": "Event stream",
            "summary": "Every host's events, kept for replay",
            "description": f"Stream queue (x-queue-type=stream), durable, declared by the worker and bound to "
                           f"{topology.events_exchange} with `#`: the same messages as the events exchange, in "
                           f"the order the broker received them, kept for EVENT_STREAM_MAX_AGE (x-max-age, "
                           f"default 7D) and at most EVENT_STREAM_MAX_BYTES (x-max-length-bytes, default 1 GiB). "
                           f"Read it over AMQP 0-9-1 with a prefetch (basic.qos) and manual acks, choosing where "
                           f"to start with the consumer argument x-stream-offset: first, last, next, an offset "
                           f"(each message carries its own in the x-stream-offset header) or a timestamp. "
                           f"Filter by routing key on the consumer's side. " + _PREFIX_NOTE,
            "messages": refs(events),
            "bindings": {"amqp": _queue(topology.event_stream)},
            "x-queue-type": "stream",
        },
        "deadLetters": {
            "address": topology.dead_letter_exchange,
            "title": "Dead-letter exchange",
            "summary": "Undecodable commands and commands over the delivery limit",
            "description": "Topic exchange, durable, declared by the worker; the per-host command queues "
                           "dead-letter to it. " + _PREFIX_NOTE,
            "messages": refs(dead),
            "bindings": {"amqp": _exchange(topology.dead_letter_exchange, "topic")},
        },
        "deadQueue": {
            "address": topology.dead_letter_queue,
            "title": "Dead-letter queue",
            "summary": "Where dead letters wait for an operator",
            "description": f"Quorum queue, durable, bound to {topology.dead_letter_exchange} with `#`. "
                           + _PREFIX_NOTE,
            "messages": refs(dead),
            "bindings": {"amqp": _queue(topology.dead_letter_queue)},
            "x-queue-type": "quorum",
        },
    }


def _operations(commands: dict, result: dict, events: dict, dead: dict) -> dict[str, Any]:
    def refs(channel: str, messages: dict) -> list[dict[str, str]]:
        return [_ref("channels", channel, "messages", key) for key in messages]

    return {
        "sendCommand": {
            "action": "send",
            "channel": _ref("channels", "commands"),
            "title": "Send a command",
            "summary": "Publish a command to the worker of one host (routing key = its host id)",
            "description": "The worker answers with exactly one terminal result per command id, on the results "
                           "exchange and, when reply_to is set, on that queue.",
            "messages": refs("commands", commands),
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "reply": {
                "address": {"description": "The command's reply_to property",
                            "location": "$message.header#/reply_to"},
                "channel": _ref("channels", "replies"),
                "messages": refs("replies", result),
            },
        },
        "receiveResults": {
            "action": "receive",
            "channel": _ref("channels", "results"),
            "title": "Receive results",
            "summary": "Bind a queue to the results exchange, e.g. with `kvm-01.#` or `*.volume.*.failed`",
            "messages": refs("results", result),
        },
        "receiveEvents": {
            "action": "receive",
            "channel": _ref("channels", "events"),
            "title": "Receive events",
            "summary": "Bind a queue to the events exchange, e.g. with `*.volume.*` or `kvm-01.#`",
            "messages": refs("events", events),
        },
        "replayEvents": {
            "action": "receive",
            "channel": _ref("channels", "eventStream"),
            "title": "Replay events",
            "summary": "Consume the event stream from a point in its past (x-stream-offset), then live",
            "description": "Per source, `sequence` counts up in publish order within one worker process: a "
                           "jump is a gap, a repeated (source, id) a copy to drop.",
            "messages": refs("eventStream", events),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        },
        "receiveDeadLetters": {
            "action": "receive",
            "channel": _ref("channels", "deadQueue"),
            "title": "Inspect dead letters",
            "summary": "An operator reads the dead-letter queue (storage-worker dead list)",
            "messages": refs("deadQueue", dead),
        },
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the contract, as a JSON-ready dict."""
    topology = Topology(prefix=DEFAULT_PREFIX, host="{host}")
    commands = command_models()
    events = event_models()
    command_messages = _command_messages(commands)
    result_messages = {"Result": _result_message()}
    event_messages = _event_messages(events)
    dead_messages = {"DeadLetter": _dead_letter_message()}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "libvirt storage worker",
            "version": _version(),
            "description": "Wire contract v1 of the libvirt storage worker, from a control plane's side: it "
                           "sends storage commands to the worker of a host over RabbitMQ (AMQP 0-9-1) and "
                           "receives one terminal result per command and state-change events (CloudEvents "
                           "1.0). " + _PREFIX_NOTE,
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": JSON,
        "servers": {
            "amqp": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
                     "description": "RabbitMQ (>= 3.10), plain AMQP; vhost `/` by default (AMQP_URL)"},
            "amqps": {"host": "localhost:5671", "protocol": "amqps", "protocolVersion": "0.9.1",
                      "description": "RabbitMQ over TLS (AMQP_CA_FILE, AMQP_CERT_FILE, AMQP_KEY_FILE)"},
        },
        "channels": _channels(topology, command_messages, result_messages, event_messages, dead_messages),
        "operations": _operations(command_messages, result_messages, event_messages, dead_messages),
        "components": {
            "schemas": _schemas(commands, events),
            "messages": {**command_messages, **result_messages, **event_messages, **dead_messages},
        },
    }
