"""Turns pydantic validation errors into one sentence naming each bad field and value."""

from __future__ import annotations

from pydantic import ValidationError

_MAX_VALUE = 80
# A message names every problem up to this many, then counts the rest: a command with thousands of
# unknown fields gets a readable answer, not one sentence per field.
_MAX_PROBLEMS = 10


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def shown(value: object) -> str:
    """A value as a message quotes it: its repr, cut to a readable length."""
    return _cut(repr(value))


def _where(prefix: str, loc: tuple) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(_cut(str(item)))  # a field name is whatever the sender made it
    return ".".join(parts) or "message"


def describe(error: ValidationError, prefix: str = "", context: str = "") -> str:
    """One readable sentence per problem, e.g. "args.capacity: Input should be greater than or
    equal to 1 (got 0)"; `context` names the operation for unknown-field errors."""
    sentences = []
    problems = error.errors(include_url=False)
    for item in problems[:_MAX_PROBLEMS]:
        where = _where(prefix, item["loc"])
        kind = item["type"]
        if kind == "missing":
            sentences.append(f"{where} is required")
        elif kind == "extra_forbidden":
            owner = f" of {context}" if context else ""
            sentences.append(f"{where} is not a field{owner} (got {shown(item['input'])})")
        elif kind == "value_error":
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            got = "" if isinstance(value, (dict, list)) else f" (got {shown(value)})"
            sentences.append(f"{where}: {message}{got}")
        else:
            sentences.append(f"{where}: {item['msg']} (got {shown(item['input'])})")
    if len(problems) > _MAX_PROBLEMS:
        sentences.append(f"{prefix or 'message'}: {len(problems) - _MAX_PROBLEMS} more problems not listed")
    return "; ".join(sentences)
