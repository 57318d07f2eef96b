"""worker.telemetry.logs: JSON lines by default, text on request; `extra` fields ride along in both."""

from __future__ import annotations

import io
import json
import logging

import pytest

from worker.telemetry.logs import JsonFormatter, TextFormatter, configure


def emit(formatter: logging.Formatter, message: str, *args, level=logging.INFO, exc=False, **extra) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        if exc:
            try:
                raise RuntimeError("kaboom")
            except RuntimeError:
                logger.exception(message, *args, extra=extra)
        else:
            logger.log(level, message, *args, extra=extra)
    finally:
        logger.handlers[:] = []
    return stream.getvalue()


def test_json_lines_carry_message_level_and_extras():
    out = emit(JsonFormatter(), "volume %s created", "vm1", level=logging.WARNING,
               command_id="c-1", pool="images", bytes=1024)
    assert out.endswith("\n") and out.count("\n") == 1
    line = json.loads(out)
    assert line["message"] == "volume vm1 created"
    assert line["level"] == "warning" and line["logger"] == "test.logs"
    assert (line["command_id"], line["pool"], line["bytes"]) == ("c-1", "images", 1024)
    assert line["time"].endswith("+00:00")
    assert "args" not in line and "msg" not in line and "levelno" not in line  # no LogRecord internals


def test_json_stays_one_line_with_newlines_and_odd_values():
    out = emit(JsonFormatter(), "two\nlines", path=__import__("pathlib").Path("/x"), obj=object())
    assert out.count("\n") == 1
    line = json.loads(out)
    assert line["message"] == "two\nlines" and line["path"] == "/x"


def test_json_includes_the_exception():
    line = json.loads(emit(JsonFormatter(), "failed", exc=True, command_id="c-2"))
    assert "RuntimeError: kaboom" in line["exception"] and line["command_id"] == "c-2"


def test_text_includes_extras():
    out = emit(TextFormatter(), "pool %s started", "images", command_id="c-3", pool="images")
    assert "INFO" in out and "test.logs: pool images started" in out
    assert "[command_id=c-3 pool=images]" in out


def test_text_without_extras_has_no_brackets():
    out = emit(TextFormatter(), "plain")
    assert out.rstrip().endswith("test.logs: plain")


@pytest.mark.parametrize("fmt, formatter", [("json", JsonFormatter), ("text", TextFormatter)])
def test_configure_installs_one_handler_with_the_format(fmt, formatter):
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure(fmt, "INFO", "kvm-01")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, formatter)
        assert root.level == logging.INFO
        assert logging.getLogger("pika").level == logging.CRITICAL  # the link reports connection trouble
        configure(fmt, "DEBUG", "kvm-01")
        assert logging.getLogger("pika").level == logging.DEBUG
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.getLogger("pika").setLevel(logging.NOTSET)


def test_lines_carry_the_host_and_the_running_command():
    from worker.telemetry.logs import ContextFilter, command_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter("kvm-01"))
    logger = logging.getLogger("test.context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("outside")
        with command_context("cmd-9", "volume.wipe"):
            logger.info("inside")
            logger.info("explicit", extra={"command_id": "other"})
    finally:
        logger.removeHandler(handler)
    outside, inside, explicit = (json.loads(line) for line in stream.getvalue().splitlines())
    assert outside["host"] == "kvm-01" and "command_id" not in outside
    assert (inside["command_id"], inside["op"], inside["host"]) == ("cmd-9", "volume.wipe", "kvm-01")
    assert explicit["command_id"] == "other"
