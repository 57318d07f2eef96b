"""AMQP over TLS (`amqps://` with TLS settings, docs/contract.md "Running the worker"), against a real TLS
listener.

The session starts an amqps listener on the running broker with throwaway certificates (see
tests/integration/tls.py) and stops it at the end; the worker, StorageClient and the CLI talk to it,
and `rabbitmqctl list_connections` shows their connections are TLS.
"""

from __future__ import annotations

import json
import logging
import os
import select
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from messages.client import StorageClient
from tests.conftest import LIBVIRT_URI, unique
from tests.integration import tls
from tests.integration.conftest import delete_broker_objects, ok, rabbitmqctl, wait_for
from worker.app import Worker
from worker.config import Settings
from worker.telemetry.logs import JsonFormatter

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))
TLS_PORT = int(os.environ["TEST_AMQPS_PORT"]) if os.environ.get("TEST_AMQPS_PORT") else None


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> tls.Pki:
    return tls.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> tls.Ca:
    """A CA that signed nothing the broker presents."""
    return tls.make_ca(tmp_path_factory.mktemp("other-ca"), "other-ca", "storage-worker unrelated test CA")


@pytest.fixture(scope="session")
def tls_listener(broker_ok, pki):
    listener = tls.TlsListener(pki, port=TLS_PORT).start()
    yield listener
    listener.stop()


@pytest.fixture
def tls_user(broker_ok):
    """A broker user of its own with a distinctive password, removed afterwards."""
    user = unique("tlsuser")
    password = f"Pw{uuid.uuid4().hex}Zq"
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def tls_client(harness, listener, pki, url=None, **files) -> StorageClient:
    client = StorageClient(url or listener.url(), host_id=harness.host, prefix=harness.settings.prefix,
                           ca_file=pki.ca.cert, **files)
    harness.clients.append(client)
    return client


def worker_connection(host_id: str) -> dict[str, str]:
    info = tls.connection_info(f"storage-worker {host_id}", "ssl", "ssl_protocol", "port", "peer_cert_subject",
                               "user")
    assert info is not None, f"the broker lists no connection of storage-worker {host_id}"
    return info


def test_worker_and_client_talk_over_tls(make_worker, tls_listener, pki):
    harness = make_worker(amqp_url=tls_listener.url(), amqp_ca_file=pki.ca.cert)
    info = ok(tls_client(harness, tls_listener, pki).call("host.info", {}, timeout=30))
    assert info

    connection = worker_connection(harness.host)
    assert connection["ssl"] == "true"
    assert connection["ssl_protocol"] in ("tlsv1.2", "tlsv1.3")
    assert connection["port"] == str(tls_listener.port)
    assert connection["peer_cert_subject"] in ("", "none")  # no client certificate was offered
    # the client's connection too: the worker's and the client's are TLS on the listener's port
    on_port = [row for row in tls.connection_rows("port", "ssl") if row[0] == str(tls_listener.port)]
    assert len(on_port) >= 2 and all(ssl == "true" for _, ssl in on_port), on_port


def test_worker_and_client_offer_client_certificates(make_worker, tls_listener, pki):
    harness = make_worker(amqp_url=tls_listener.url(), amqp_ca_file=pki.ca.cert,
                          amqp_cert_file=pki.client_cert, amqp_key_file=pki.client_key)
    client = tls_client(harness, tls_listener, pki, cert_file=pki.client_cert, key_file=pki.client_key)
    ok(client.call("host.info", {}, timeout=30))

    connection = worker_connection(harness.host)
    assert connection["ssl"] == "true"
    assert connection["peer_cert_subject"] == f"CN={pki.client_cn}"  # the broker verified it (verify_peer)
    subjects = [row[1] for row in tls.connection_rows("port", "peer_cert_subject")
                if row[0] == str(tls_listener.port)]
    assert subjects.count(f"CN={pki.client_cn}") >= 2, subjects


def worker_settings(tmp_path: Path, **overrides) -> Settings:
    tag = unique("t")
    root = tmp_path / "roots" / tag
    root.mkdir(parents=True)
    return Settings(**{"host_id": tag, "prefix": f"test-{tag}", "libvirt_uri": LIBVIRT_URI,
                       "state_dir": tmp_path / "state" / tag, "allowed_roots": [str(root)], "concurrency": 2,
                       "metrics_port": 0, **overrides})


def start_failing(settings: Settings, ready_timeout: float = 5.0) -> TimeoutError:
    """Start a worker that must not reach the broker; stop it again whatever happens."""
    worker = Worker(settings)
    try:
        with pytest.raises(TimeoutError) as raised:
            worker.start(ready_timeout=ready_timeout)
        return raised.value
    finally:
        worker.stop(grace=1)
        delete_broker_objects(settings)


def test_a_worker_that_does_not_trust_the_broker_certificate_fails_clearly(
        broker_ok, libvirt_conn, tls_listener, other_ca, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = worker_settings(tmp_path, amqp_url=tls_listener.url(), amqp_ca_file=other_ca.cert)
    error = start_failing(settings)
    assert "did not become ready" in str(error)

    reasons = [str(r.reason) for r in caplog.records
               if r.name == "worker.transport.link" and r.levelno == logging.WARNING and hasattr(r, "reason")]
    assert reasons and all("CERTIFICATE_VERIFY_FAILED" in reason and "certificate verify failed" in reason
                           for reason in reasons), reasons
    assert tls.connection_info(f"storage-worker {settings.host_id}", "ssl") is None


def test_a_client_that_does_not_trust_the_broker_certificate_fails_clearly(tls_listener, other_ca):
    with pytest.raises(ssl.SSLCertVerificationError) as raised:  # what pika's BlockingConnection re-raises
        StorageClient(tls_listener.url(), host_id="nobody", ca_file=other_ca.cert)
    assert "certificate verify failed" in str(raised.value)


def test_the_broker_may_be_named_by_its_ip_address(tls_listener, pki):
    """The server certificate also names IP:127.0.0.1; the URL's host is what is checked."""
    with StorageClient(tls_listener.url(host="127.0.0.1"), ca_file=pki.ca.cert) as client:
        assert client.topology.prefix == "storage"


def all_log_text(records: list[logging.LogRecord]) -> str:
    formatter = JsonFormatter()
    return "\n".join(f"{formatter.format(r)}\n{r.getMessage()}\n{r.__dict__!r}" for r in records)


def test_the_amqp_password_never_appears_in_logs(tls_user, make_worker, tls_listener, pki, other_ca, tmp_path,
                                                  caplog):
    user, password = tls_user
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pika")
    url = tls_listener.url(user, password)

    harness = make_worker(amqp_url=url, amqp_ca_file=pki.ca.cert)
    ok(tls_client(harness, tls_listener, pki, url=url).call("host.info", {}, timeout=30))
    assert worker_connection(harness.host)["user"] == user  # the password was really used
    harness.worker.stop(grace=5)
    # a failing start logs its errors too
    start_failing(worker_settings(tmp_path, amqp_url=url, amqp_ca_file=other_ca.cert), ready_timeout=2)

    records = caplog.records
    assert any(r.name.startswith("pika") and r.levelno == logging.DEBUG for r in records)  # DEBUG was on
    assert any("certificate verify failed" in str(getattr(r, "reason", "")) for r in records)
    text = all_log_text(records)
    assert f"localhost:{tls_listener.port}" in text  # the connection's own log lines were captured
    assert password not in text


def test_cli_call_and_events_use_the_tls_settings(make_worker, tls_listener, pki):
    harness = make_worker(amqp_url=tls_listener.url(), amqp_ca_file=pki.ca.cert)
    env = {**os.environ, "STORAGE_WORKER_AMQP_CA_FILE": str(pki.ca.cert),
           "STORAGE_WORKER_AMQP_CERT_FILE": str(pki.client_cert),
           "STORAGE_WORKER_AMQP_KEY_FILE": str(pki.client_key)}
    common = ["--prefix", harness.settings.prefix, "--amqp-url", tls_listener.url()]

    done = subprocess.run([CLI, "call", "host.info", "--host-id", harness.host, *common], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"

    pattern = f"{harness.host}.pool.*"
    events = subprocess.Popen([CLI, "events", pattern, *common], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def follower_bound() -> bool:
            assert events.poll() is None, events.stderr.read() if events.stderr else ""
            rows = rabbitmqctl("list_bindings", "source_name", "routing_key").splitlines()
            return f"{harness.settings.topology.events_exchange}\t{pattern}" in rows
        wait_for(follower_bound, 30, "storage-worker events to bind its queue", interval=0.2)
        name = harness.name("pool")
        ok(harness.client().call("pool.define", {"name": name, "type": "dir", "build": True, "start": True,
                                                 "target": {"path": str(harness.root / name)}}))
        assert events.stdout is not None

        def line_about_the_pool() -> str | None:
            # The worker reports every pool of the host: lines about other tests' pools pass by.
            readable, _, _ = select.select([events.stdout], [], [], 0.5)
            line = events.stdout.readline() if readable else ""
            return line if name in line else None

        line = wait_for(line_about_the_pool, 30, "storage-worker events to print the pool's event", interval=0)
        assert line.split()[1] == harness.host, line
        subjects = [row[1] for row in tls.connection_rows("port", "peer_cert_subject")
                    if row[0] == str(tls_listener.port)]
        assert f"CN={pki.client_cn}" in subjects, subjects  # the events follower's TLS connection
    finally:
        events.terminate()
        events.wait(timeout=10)
