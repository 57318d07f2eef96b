"""Turns pydantic validation errors into one sentence naming each bad field and value."""

from __future__ import annotations

from pydantic import ValidationError

_MAX_VALUE = 80


def shown(value: object) -> str:
    """A value as a message quotes it: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _where(prefix: str, loc: tuple) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "message"


def describe(error: ValidationError, prefix: str = "", context: str = "") -> str:
    """One readable sentence per problem, e.g. "args.capacity: Input should be greater than or
    equal to 1 (got 0)"; `context` names the operation for unknown-field errors."""
    sentences = []
    for item in error.errors(include_url=False):
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
    return "; ".join(sentences)
