"""The command envelope (docs/contract.md "Commands"): decoding a message body into a typed command.

Two failure kinds, because the contract treats them differently:
- `Undecodable`: the body cannot be read as a command with a usable id. Answered (when it has
  reply_to) with a rejected/invalid result and always dead-lettered.
- `CommandRejected`: the id is usable but the rest is not. Answered like any command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, TypeAdapter, ValidationError

from messages.errors import describe, shown
from messages.fields import COMMAND_ID_PATTERN
from messages.operations import OPERATIONS

MAX_BODY = 1024 * 1024
_ID = re.compile(COMMAND_ID_PATTERN)
_ENVELOPE_FIELDS = {"id", "op", "args", "deadline"}
_DEADLINE = TypeAdapter(AwareDatetime)
# RFC 3339 date-time: seconds and a time zone are required (pydantic alone would also take numbers,
# numeric strings as Unix times, and times without seconds).
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})$")


class Undecodable(Exception):
    """The body is not a command with a usable id; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CommandRejected(Exception):
    """The command has a usable id but cannot be executed as sent."""

    def __init__(self, command_id: str, op: str | None, reason: str, fingerprint: str):
        super().__init__(reason)
        self.command_id = command_id
        self.op = op
        self.reason = reason
        self.fingerprint = fingerprint


@dataclass(frozen=True)
class Command:
    id: str
    op: str
    args: BaseModel
    deadline: datetime | None = None
    fingerprint: str = field(default="", compare=False)

    @property
    def args_dict(self) -> dict[str, Any]:
        return self.args.model_dump(mode="json")


def fingerprint(op: Any, args: Any) -> str:
    """Identity of what a command asks for, to tell a re-send from a conflicting reuse of its id."""
    canonical = json.dumps({"op": op, "args": args}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise Undecodable(f"the body is {len(body)} bytes, over the limit of {MAX_BODY} bytes")
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Undecodable(f"the body is not UTF-8 text (byte {exc.start} is invalid)") from None
    except json.JSONDecodeError as exc:
        raise Undecodable(f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int conversion limit
        raise Undecodable(f"the body is JSON that cannot be read: {exc}") from None
    except RecursionError:
        raise Undecodable("the body is JSON nested too deeply to read") from None
    if not isinstance(document, dict):
        raise Undecodable(f"the body is a JSON {_json_type(document)}, not an object")
    command_id = document.get("id")
    if command_id is None:
        raise Undecodable("the command has no id")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= 128 or not _ID.match(command_id):
        raise Undecodable(f"the command id {shown(command_id)} is not 1-128 characters of [A-Za-z0-9._:-]")
    return document


def decode(body: bytes) -> Command:
    """Parse and validate a command body; raises Undecodable or CommandRejected."""
    document = _load(body)
    command_id = document["id"]
    op = document.get("op")
    raw_args = document.get("args", {})
    def reject(reason: str, known_op: str | None = None) -> CommandRejected:
        return CommandRejected(command_id, known_op, reason, fingerprint(op, raw_args))

    extra = sorted(set(document) - _ENVELOPE_FIELDS)
    if extra:
        known = op if isinstance(op, str) and op in OPERATIONS else None
        raise reject(f"{shown(extra[0])} is not a field of the command envelope "
                     f"(allowed: args, deadline, id, op; got {shown(document[extra[0]])})", known)
    if op is None:
        raise reject("op is required")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise reject(f"op {shown(op)} is not an operation; known operations: {', '.join(sorted(OPERATIONS))}")
    if raw_args is None:
        raw_args = {}
    if not isinstance(raw_args, dict):
        raise reject(f"args must be a JSON object, got {_json_type(raw_args)} {shown(raw_args)}", op)
    deadline = None
    if document.get("deadline") is not None:
        raw_deadline = document["deadline"]
        try:
            if not isinstance(raw_deadline, str) or not _RFC3339.match(raw_deadline):
                raise ValueError(raw_deadline)
            deadline = _DEADLINE.validate_python(raw_deadline)
        except (ValueError, ValidationError):
            raise reject(f"deadline {shown(raw_deadline)} is not an RFC 3339 date-time with a time zone, "
                         f"e.g. '2026-11-26T10:00:00Z'", op) from None
    try:
        args = OPERATIONS[op].args.model_validate(raw_args)
    except ValidationError as exc:
        raise reject(describe(exc, "args", op), op) from None
    return Command(id=command_id, op=op, args=args, deadline=deadline,
                   fingerprint=fingerprint(op, args.model_dump(mode="json")))


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def encode(command_id: str, op: str, args: dict[str, Any] | BaseModel | None = None,
           deadline: datetime | None = None) -> bytes:
    """The JSON body of a command, for clients."""
    if deadline is not None and deadline.utcoffset() is None:
        raise ValueError("a deadline needs a time zone (an aware datetime)")
    if isinstance(args, BaseModel):
        args = args.model_dump(mode="json", exclude_none=True)
    document: dict[str, Any] = {"id": command_id, "op": op, "args": args or {}}
    if deadline is not None:
        document["deadline"] = deadline.isoformat()
    return json.dumps(document, separators=(",", ":")).encode()
