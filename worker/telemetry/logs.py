"""Logging: JSON lines by default, plain text on request; `extra` fields ride along.

Every line carries the worker's host id, and a line logged while a command runs (on its executor
thread, in the handler, in the retry loop) carries the command's id and op without the caller
having to pass them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

_command: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("command", default=None)


@contextmanager
def command_context(command_id: str, op: str) -> Iterator[None]:
    token = _command.set((command_id, op))
    try:
        yield
    finally:
        _command.reset(token)


class ContextFilter(logging.Filter):
    def __init__(self, host_id: str):
        super().__init__()
        self._host_id = host_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.setdefault("host", self._host_id)
        current = _command.get()
        if current is not None:
            record.__dict__.setdefault("command_id", current[0])
            record.__dict__.setdefault("op", current[1])
        return True

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text += f" [{extras}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(fmt: str, level: str, host_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(host_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every failed connection attempt at ERROR with a traceback; the link logs each one
    # itself, in one line that says what it does next. pika speaks up again at DEBUG.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
