"""The command envelope (CONTRACT §2): decoding a message body into a typed command.

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

from messages.errors import describe
from messages.fields import COMMAND_ID_PATTERN
from messages.operations import OPERATIONS

MAX_BODY = 1024 * 1024
_ID = re.compile(COMMAND_ID_PATTERN)
_ENVELOPE_FIELDS = {"id", "op", "args", "deadline"}
_DEADLINE = TypeAdapter(AwareDatetime)


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
    if not isinstance(document, dict):
        raise Undecodable(f"the body is a JSON {type(document).__name__}, not an object")
    command_id = document.get("id")
    if command_id is None:
        raise Undecodable("the command has no id")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= 128 or not _ID.match(command_id):
        raise Undecodable(f"the command id {command_id!r} is not 1-128 characters of [A-Za-z0-9._:-]")
    return document


def decode(body: bytes) -> Command:
    """Parse and validate a command body; raises Undecodable or CommandRejected."""
    document = _load(body)
    command_id = document["id"]
    op = document.get("op")
    raw_args = document.get("args", {})
    raw_print = fingerprint(op, raw_args)

    def reject(reason: str, known_op: str | None = None) -> CommandRejected:
        return CommandRejected(command_id, known_op, reason, raw_print)

    extra = sorted(set(document) - _ENVELOPE_FIELDS)
    if extra:
        raise reject(f"{extra[0]!r} is not a field of the command envelope "
                     f"(allowed: args, deadline, id, op)", op if op in OPERATIONS else None)
    if op is None:
        raise reject("op is required")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise reject(f"op {op!r} is not an operation; known operations: {', '.join(sorted(OPERATIONS))}")
    if raw_args is None:
        raw_args = {}
    if not isinstance(raw_args, dict):
        raise reject(f"args must be a JSON object, got {type(raw_args).__name__}", op)
    deadline = None
    if document.get("deadline") is not None:
        try:
            deadline = _DEADLINE.validate_python(document["deadline"])
        except ValidationError:
            raise reject(f"deadline {document['deadline']!r} is not an RFC 3339 date-time with a time zone", op) from None
    try:
        args = OPERATIONS[op].args.model_validate(raw_args)
    except ValidationError as exc:
        raise reject(describe(exc, "args", op), op) from None
    return Command(id=command_id, op=op, args=args, deadline=deadline,
                   fingerprint=fingerprint(op, args.model_dump(mode="json")))


def encode(command_id: str, op: str, args: dict[str, Any] | BaseModel | None = None,
           deadline: datetime | None = None) -> bytes:
    """The JSON body of a command, for clients."""
    if isinstance(args, BaseModel):
        args = args.model_dump(mode="json", exclude_none=True)
    document: dict[str, Any] = {"id": command_id, "op": op, "args": args or {}}
    if deadline is not None:
        document["deadline"] = deadline.isoformat()
    return json.dumps(document, separators=(",", ":")).encode()
