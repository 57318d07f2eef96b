"""worker.ops.doctor without services: masking, formatting, exit codes, error classification, reading the
broker's PRECONDITION_FAILED texts, and the local checks (state dir, journal, allowed roots, policy)."""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import ssl

import pika.exceptions as pe
import pytest

from worker.config import Settings
from worker.ops import doctor
from worker.ops.doctor.broker import classify_broker_error, set_permissions_command
from worker.ops.doctor.context import Context
from worker.ops.doctor.exchanges import check_exchanges
from worker.ops.doctor.inequivalent import ABSENT, parse_inequivalent
from worker.ops.doctor.libvirtd import check_pool_types, libvirt_fix
from worker.ops.doctor.local import JOURNAL_FILE, check_allowed_roots, check_journal, check_policy, check_state_dir
from worker.ops.doctor.masking import mask_url, scrub, url_secrets
from worker.ops.doctor.permissions import check_permissions
from worker.ops.doctor.queues import (Difference, check_command_queue, check_dead_queue, check_event_stream,
                                      difference_text, queue_fix, stream_setting_for)
from worker.ops.doctor.report import (Check, Status, exit_code, fail, format_json, format_line, format_report, ok,
                                      skip, warn)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("STORAGE_WORKER_"):
            monkeypatch.delenv(name)


def settings(tmp_path, **overrides) -> Settings:
    values = {"host_id": "kvm-01", "state_dir": tmp_path / "state", "allowed_roots": [str(tmp_path)]}
    values.update(overrides)
    return Settings(**values)


# --- masking --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
    ("amqps://worker:s3cr%40t@rabbit.example:5671/prod", "amqps://worker:***@rabbit.example:5671/prod"),
    ("amqp://worker:p:a:ss@host/", "amqp://worker:***@host/"),
    ("amqp://worker:p@ss@host/", "amqp://worker:***@host/"),
    ("amqp://worker@host/", "amqp://worker@host/"),
    ("amqp://host:5672/%2F", "amqp://host:5672/%2F"),
    ("amqp://[::1", "<unparsable URL>"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_url_secrets_raw_and_decoded():
    assert set(url_secrets("amqp://worker:s3cr%40t@host/")) == {"s3cr@t", "s3cr%40t"}
    assert url_secrets("amqp://worker@host/") == []
    # guest/guest is no secret; scrubbing it would hide the user name
    assert url_secrets("amqp://guest:guest@host/") == []


def test_scrub():
    assert scrub("login as bob with hunter2 failed", ["hunter2"]) == "login as bob with *** failed"
    assert scrub("nothing", ["", "x" * 3]) == "nothing"


def test_a_broken_check_reports_without_the_password(tmp_path):
    def leaky(ctx: Context) -> Check:
        raise RuntimeError(f"boom while using {ctx.url}")

    s = settings(tmp_path, amqp_url="amqp://worker:TopSecret1@host/")
    [result] = doctor.run_checks(s, [leaky])
    assert result.name == "leaky" and result.status == Status.fail
    assert "TopSecret1" not in result.detail and "***" in result.detail


# --- formatting and exit code ----------------------------------------------------------------------

def test_format_line_pads_and_shows_fix_for_problems_only():
    assert format_line(ok("broker", "amqp://guest:***@localhost:5672/%2F reachable (RabbitMQ 3.10.8)")) == \
        "ok   broker        amqp://guest:***@localhost:5672/%2F reachable (RabbitMQ 3.10.8)"
    assert format_line(fail("libvirt", "down", "start it")) == "FAIL libvirt       down → fix: start it"
    assert format_line(warn("dead_queue", "missing")) == "WARN dead_queue    missing"
    assert format_line(skip("pool_types", "not checked")) == "skip pool_types    not checked"


def test_format_report_aligns_long_names():
    first, second = format_report([ok("a", "x"), ok("a_much_longer_name", "y")]).splitlines()
    assert first.index("x") == second.index("y")


def test_exit_code_fails_only_on_fail():
    assert exit_code([ok("a", ""), warn("b", ""), skip("c", "")]) == 0
    assert exit_code([ok("a", ""), fail("b", "")]) == 1
    assert exit_code([]) == 0


def test_format_json():
    document = json.loads(format_json([ok("a", "fine"), fail("b", "bad", "do x")]))
    assert document["ok"] is False
    assert document["checks"][1] == {"name": "b", "status": "fail", "detail": "bad", "fix": "do x"}
    assert json.loads(format_json([warn("a", "meh")]))["ok"] is True


def test_doctor_reports_bad_settings_and_exits_1(monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_CONCURRENCY", "0")
    out = io.StringIO()
    assert doctor.doctor({}, None, out=out) == 1
    line = out.getvalue().strip()
    assert line.startswith("FAIL settings") and "concurrency" in line


def test_doctor_names_a_missing_config_file(tmp_path):
    out = io.StringIO()
    assert doctor.doctor({}, str(tmp_path / "absent.toml"), as_json=True, out=out) == 1
    [check] = json.loads(out.getvalue())["checks"]
    assert check["name"] == "settings" and "absent.toml" in check["detail"]


def test_doctor_falls_back_to_ascii_arrow(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "run_checks", lambda s: [fail("x", "bad", "fix it")])
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert doctor.doctor({"host_id": "h"}, None, out=out) == 1
    out.seek(0)
    assert out.read().strip() == "FAIL x             bad -> fix: fix it"


def test_cli_has_doctor_with_common_flags():
    from worker.ops.cli import build_parser

    ns = build_parser().parse_args(["doctor", "--json", "--libvirt-uri", "test:///default", "--host-id", "h",
                                    "--amqp-url", "amqp://x@y/", "--prefix", "p", "--config", "c.toml"])
    assert ns.json and ns.libvirt_uri == "test:///default" and ns.prefix == "p" and ns.config == "c.toml"
    assert ns.func.__name__ == "cmd_doctor"


def test_journal_file_name_matches_the_worker():
    from worker.app import JOURNAL_FILE as WORKERS_JOURNAL_FILE

    assert JOURNAL_FILE == WORKERS_JOURNAL_FILE


# --- broker errors ----------------------------------------------------------------------------------

def _connect_error(inner: BaseException) -> BaseException:
    from pika.adapters.utils.connection_workflow import AMQPConnectorSocketConnectError

    return pe.AMQPConnectionError(AMQPConnectorSocketConnectError(inner))


@pytest.mark.parametrize("error, kind", [
    (_connect_error(ConnectionRefusedError(111, "Connection refused")), "refused"),
    (_connect_error(socket.timeout("timed out")), "timeout"),
    (socket.gaierror(-2, "Name or service not known"), "dns"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls"),
    (pe.ProbableAuthenticationError("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'"), "auth"),
    (pe.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost x not found'"), "vhost"),
    (pe.IncompatibleProtocolError("StreamLostError: ('Transport indicated EOF',)"), "protocol"),
    (pe.AMQPConnectionError("something else"), "other"),
])
def test_classify_broker_error(error, kind):
    assert classify_broker_error(error) == kind


def test_set_permissions_command_escapes_the_prefix():
    assert set_permissions_command("/", "worker", "test-a.b") == (
        "rabbitmqctl set_permissions -p / worker '^test\\-a\\.b\\.' '^(test\\-a\\.b\\..*|amq\\.default)$' "
        "'^test\\-a\\.b\\.'")


# --- PRECONDITION_FAILED texts (as RabbitMQ 3.10 writes them) ----------------------------------------

@pytest.mark.parametrize("text, sent, parsed", [
    ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'p.commands.h' in vhost '/': received "
     "the value 'quorum' of type 'longstr' but current is none", "quorum", ("x-queue-type", ABSENT)),
    ("PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': received "
     "none but current is the value 'true' of type 'bool'", None, ("x-single-active-consumer", True)),
    ("PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': received "
     "'false' but current is 'true'", False, ("x-single-active-consumer", True)),
    ("PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none but "
     "current is the value '10' of type 'signedint'", None, ("x-max-length", 10)),
    ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received the value "
     "'5' of type 'signedint' but current is the value '3' of type 'long'", 5, ("x-delivery-limit", 3)),
    ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value "
     "'classic' of type 'longstr' but current is the value 'quorum' of type 'longstr'", "classic",
     ("x-queue-type", "quorum")),
    ("PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but "
     "current is 'false'", None, ("durable", "false")),
    ("PRECONDITION_FAILED - something new", None, None),
    ("PRECONDITION_FAILED - inequivalent arg 'x' for queue 'q' in vhost '/': received none but current is "
     "the value '1.5' of type 'float'", None, None),
])
def test_parse_inequivalent(text, sent, parsed):
    assert parse_inequivalent(text, sent) == parsed


def test_queue_fix_offers_settings_when_they_can_match():
    fix = queue_fix("p.commands.h", "/", [Difference("x-queue-type", "quorum", "classic")], True, 0)
    assert "rabbitmqctl delete_queue -p / p.commands.h" in fix
    assert "STORAGE_WORKER_QUEUE_TYPE=classic" in fix
    fix = queue_fix("q", "/", [Difference("x-delivery-limit", 5, 3),
                               Difference("x-single-active-consumer", True, ABSENT)], True, 2)
    assert "STORAGE_WORKER_DELIVERY_LIMIT=3" in fix and "STORAGE_WORKER_SINGLE_ACTIVE_CONSUMER=false" in fix
    assert "2 message(s)" in fix


def test_queue_fix_says_when_queue_type_alone_is_not_enough():
    fix = queue_fix("q", "/", [Difference("x-dead-letter-exchange", "p.dlx", ABSENT),
                               Difference("x-queue-type", "quorum", ABSENT)], True, 0)
    assert "delete it" in fix
    assert "(STORAGE_WORKER_QUEUE_TYPE=classic would match its type, but no setting matches its x-dead-letter-exchange)" in fix


def test_event_stream_fix_offers_the_retention_settings_and_never_the_queue_type():
    fix = queue_fix("p.events.stream", "/", [Difference("x-max-age", "7D", "1D"),
                                             Difference("x-max-length-bytes", 2**30, 1000)], True, 12,
                    settings_for=stream_setting_for)
    assert "rabbitmqctl delete_queue -p / p.events.stream" in fix and "12 message(s)" in fix
    assert "STORAGE_WORKER_EVENT_STREAM_MAX_AGE=1D STORAGE_WORKER_EVENT_STREAM_MAX_BYTES=1000" in fix
    fix = queue_fix("p.events.stream", "/", [Difference("x-queue-type", "stream", ABSENT)], True, 0,
                    settings_for=stream_setting_for)
    assert "delete it" in fix and "QUEUE_TYPE" not in fix


def test_difference_text():
    assert difference_text(Difference("x-queue-type", "quorum", ABSENT)) == \
        "x-queue-type is none (a classic queue), the worker wants quorum"
    assert difference_text(Difference("x-single-active-consumer", True, False)) == \
        "x-single-active-consumer is false, the worker wants true"


# --- local checks ------------------------------------------------------------------------------------

def test_state_dir_that_does_not_exist_is_created_and_removed_again(tmp_path):
    s = settings(tmp_path, state_dir=tmp_path / "a" / "b")
    result = check_state_dir(Context(settings=s))
    assert result.status == Status.ok and "can be created" in result.detail
    assert not (tmp_path / "a").exists()


def test_state_dir_writable(tmp_path):
    (tmp_path / "state").mkdir()
    result = check_state_dir(Context(settings=settings(tmp_path)))
    assert result.status == Status.ok and "writable" in result.detail
    assert list((tmp_path / "state").iterdir()) == []


def test_state_dir_under_a_file_fails_and_journal_is_skipped(tmp_path):
    (tmp_path / "file").write_text("x")
    ctx = Context(settings=settings(tmp_path, state_dir=tmp_path / "file" / "state"))
    result = check_state_dir(ctx)
    assert result.status == Status.fail and "Not a directory" in result.detail
    assert "STORAGE_WORKER_STATE_DIR" in result.fix
    assert check_journal(ctx).status == Status.skip


def test_state_dir_that_is_a_file_fails(tmp_path):
    (tmp_path / "state").write_text("x")
    result = check_state_dir(Context(settings=settings(tmp_path)))
    assert result.status == Status.fail and "not a directory" in result.detail


def test_journal_absent_valid_and_corrupt(tmp_path):
    ctx = Context(settings=settings(tmp_path))
    assert check_journal(ctx).status == Status.ok
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / JOURNAL_FILE
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE commands (id TEXT)")
    db.execute("INSERT INTO commands VALUES ('a'), ('b')")
    db.commit()
    db.close()
    result = check_journal(ctx)
    assert result.status == Status.ok and "2 command(s)" in result.detail
    path.write_bytes(b"this is not sqlite" * 100)
    result = check_journal(ctx)
    assert result.status == Status.fail and "not a readable SQLite database" in result.detail


def test_journal_from_a_real_worker_journal(tmp_path):
    from worker.state.journal import Journal

    (tmp_path / "state").mkdir()
    Journal(tmp_path / "state" / JOURNAL_FILE).close()
    result = check_journal(Context(settings=settings(tmp_path)))
    assert result.status == Status.ok and "0 command(s)" in result.detail


def test_allowed_roots(tmp_path):
    (tmp_path / "file").write_text("x")
    s = settings(tmp_path, allowed_roots=[str(tmp_path), str(tmp_path / "missing"), str(tmp_path / "file")])
    result = check_allowed_roots(Context(settings=s))
    assert result.status == Status.warn
    assert f"missing: {tmp_path / 'missing'}" in result.detail and "not directories" in result.detail
    assert check_allowed_roots(Context(settings=settings(tmp_path))).status == Status.ok
    assert check_allowed_roots(Context(settings=settings(tmp_path, allowed_roots=[]))).status == Status.warn


def test_policy(tmp_path):
    assert check_policy(Context(settings=settings(tmp_path))).status == Status.ok
    good = tmp_path / "good.toml"
    good.write_text('[users.cp]\nops = ["*"]\n')
    result = check_policy(Context(settings=settings(tmp_path, policy_file=good)))
    assert result.status == Status.ok and "cp" in result.detail
    bad = tmp_path / "bad.toml"
    bad.write_text('[users.cp]\nops = "*"\n')
    result = check_policy(Context(settings=settings(tmp_path, policy_file=bad)))
    assert result.status == Status.fail and str(bad) in result.detail


def test_broker_dependent_checks_skip_without_a_broker(tmp_path):
    ctx = Context(settings=settings(tmp_path))
    for check in (check_permissions, check_exchanges, check_command_queue, check_dead_queue, check_event_stream):
        assert check(ctx).status == Status.skip
    assert check_pool_types(ctx).status == Status.skip


@pytest.mark.parametrize("message, hint", [
    ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory", "start libvirtd"),
    ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied", "libvirt group"),
    ("no connection driver available for foo:///x", "install the libvirt driver"),
    ("something odd", "check that libvirtd runs"),
])
def test_libvirt_fix(message, hint):
    assert hint in libvirt_fix("qemu:///system", message)
