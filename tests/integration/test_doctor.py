"""`storage-worker doctor` as an operator runs it: the console script against the real RabbitMQ and
libvirtd. Every test uses its own prefix and host id and removes what it declares."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pika
import pytest

from tests.conftest import AMQP_URL, LIBVIRT_URI, unique
from tests.integration.conftest import delete_broker_objects
from worker.transport.topology import declarations
from worker.config import Settings

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))
RABBITMQCTL = shutil.which("rabbitmqctl")


@pytest.fixture
def place(tmp_path, broker_ok):
    """A unique prefix and host id, a state dir and an allowed root; broker objects removed after."""
    tag = unique("d")
    root = tmp_path / "root"
    root.mkdir()
    settings = Settings(host_id=tag, prefix=f"test-{tag}", amqp_url=AMQP_URL, state_dir=tmp_path / "state",
                        allowed_roots=[str(root)])
    yield settings
    delete_broker_objects(settings)
    assert leftovers(settings.prefix) == []


def leftovers(prefix: str) -> list[str]:
    """Names of the doctor's scratch exchanges and queues still on the broker (needs rabbitmqctl)."""
    if RABBITMQCTL is None:
        return []
    names = []
    for what in ("list_exchanges", "list_queues"):
        done = subprocess.run([RABBITMQCTL, "-q", what, "name"], capture_output=True, text=True, timeout=60)
        names += [n for n in done.stdout.split() if n.startswith(f"{prefix}.doctor-")]
    return names


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STORAGE_WORKER_")}
    env.update({"STORAGE_WORKER_STATE_DIR": str(settings.state_dir),
                "STORAGE_WORKER_ALLOWED_ROOTS": json.dumps(list(settings.allowed_roots))})
    env.update(extra)
    return env


def doctor(settings: Settings, *flags: str, amqp_url: str = AMQP_URL, env: dict[str, str] | None = None,
           as_json: bool = True):
    args = [CLI, "doctor", "--host-id", settings.host_id, "--prefix", settings.prefix, "--amqp-url", amqp_url,
            "--libvirt-uri", LIBVIRT_URI, *flags]
    if as_json:
        args.append("--json")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env=env if env is not None else environment(settings))
    if not as_json:
        return done, None
    return done, {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def declare_topology(settings: Settings) -> None:
    """What the worker declares at start, declared the same way."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for item in declarations(settings.topology, queue_type=settings.queue_type,
                                 delivery_limit=settings.delivery_limit,
                                 single_active_consumer=settings.single_active_consumer,
                                 event_stream_max_age=settings.event_stream_max_age,
                                 event_stream_max_bytes=settings.event_stream_max_bytes):
            if item.kind == "exchange":
                channel.exchange_declare(item.name, exchange_type=item.exchange_type, durable=True)
            elif item.kind == "queue":
                channel.queue_declare(item.name, durable=True, arguments=item.arguments or None)
            else:
                channel.queue_bind(item.name, item.source, routing_key=item.routing_key)
    finally:
        connection.close()


def test_all_ok_on_a_fresh_host(place, libvirt_conn):
    done, checks = doctor(place)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("broker", "permissions", "libvirt", "pool_types", "state_dir", "journal", "allowed_roots",
                 "policy"):
        assert checks[name]["status"] == "ok", checks[name]
    # Nothing declared yet: the worker creates these at start.
    for name in ("exchanges", "command_queue", "dead_queue", "event_stream"):
        assert checks[name]["status"] == "warn" and "not" in checks[name]["detail"], checks[name]
    assert place.topology.command_queue in checks["command_queue"]["detail"]
    assert "dir" in checks["pool_types"]["detail"]
    assert not Path(place.state_dir).exists(), "the doctor removes the state dir it created to test it"


def test_all_ok_with_the_worker_topology_in_place(place, libvirt_conn):
    declare_topology(place)
    Path(place.state_dir).mkdir()
    done, checks = doctor(place)
    assert done.returncode == 0, done.stdout
    # The machine's broker runs without the management plugin, which alone tells quorum members
    # (the cluster tests check that verdict on nodes that have it).
    quorum = checks.pop("quorum_members")
    assert quorum["status"] == "skip" and "enable the rabbitmq_management plugin" in quorum["detail"], quorum
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert "exists with the expected arguments" in checks["command_queue"]["detail"]


def test_text_output_masks_the_password(place, libvirt_conn):
    done, _ = doctor(place, as_json=False)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    broker = next(line for line in lines if line.split()[1] == "broker")
    assert broker.startswith("ok   broker ") and "guest:***@" in broker and "reachable (RabbitMQ" in broker
    assert ":guest@" not in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_port_fails_broker_with_a_fix(place):
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    done, checks = doctor(place, amqp_url=url)
    assert done.returncode == 1
    broker = checks["broker"]
    assert broker["status"] == "fail" and "refused" in broker["detail"]
    assert "start RabbitMQ" in broker["fix"] and "STORAGE_WORKER_AMQP_URL" in broker["fix"]
    assert checks["permissions"]["status"] == "skip"
    text, _ = doctor(place, amqp_url=url, as_json=False)
    assert text.returncode == 1
    assert any(line.startswith("FAIL broker") and "→ fix: start RabbitMQ" in line for line in text.stdout.splitlines())


def test_wrong_password_says_authentication_and_hides_it(place):
    secret = f"wrong-{uuid.uuid4().hex[:8]}"
    done, checks = doctor(place, amqp_url=f"amqp://guest:{secret}@127.0.0.1:5672/%2F")
    assert done.returncode == 1
    assert checks["broker"]["status"] == "fail" and "authentication" in checks["broker"]["detail"]
    assert secret not in done.stdout and secret not in done.stderr


def test_unwritable_state_dir_fails(place, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = environment(place, STORAGE_WORKER_STATE_DIR=str(blocker / "state"))
    done, checks = doctor(place, env=env)
    assert done.returncode == 1
    assert checks["state_dir"]["status"] == "fail" and str(blocker / "state") in checks["state_dir"]["detail"]
    assert "STORAGE_WORKER_STATE_DIR" in checks["state_dir"]["fix"]
    assert checks["journal"]["status"] == "skip"


def test_queue_with_other_arguments_fails_naming_it(place):
    queue = place.topology.command_queue
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_declare(queue, durable=True)  # classic, no arguments
        env = environment(place, STORAGE_WORKER_QUEUE_TYPE="quorum")
        done, checks = doctor(place, env=env)
        assert done.returncode == 1
        check = checks["command_queue"]
        assert check["status"] == "fail" and queue in check["detail"]
        assert "x-queue-type is none (a classic queue), the worker wants quorum" in check["detail"]
        assert f"rabbitmqctl delete_queue -p / {queue}" in check["fix"]
        assert "STORAGE_WORKER_QUEUE_TYPE=classic" in check["fix"]
        # The doctor changed nothing: the classic queue is still there, still classic.
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        # And with QUEUE_TYPE=classic the only difference left is the dead-letter exchange.
        done, checks = doctor(place, env=environment(place, STORAGE_WORKER_QUEUE_TYPE="classic"))
        assert "x-queue-type" not in checks["command_queue"]["detail"]
        assert "x-dead-letter-exchange" in checks["command_queue"]["detail"]
    finally:
        connection.channel().queue_delete(queue)
        connection.close()


def test_event_stream_with_other_retention_fails_naming_the_settings(place):
    stream = place.topology.event_stream
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_declare(stream, durable=True, arguments={
            "x-queue-type": "stream", "x-max-age": "1D", "x-max-length-bytes": 5 * 2**20})
        done, checks = doctor(place)
        assert done.returncode == 1
        check = checks["event_stream"]
        assert check["status"] == "fail" and stream in check["detail"]
        assert "x-max-age is 1D, the worker wants 7D" in check["detail"]
        assert f"x-max-length-bytes is {5 * 2**20}, the worker wants {2**30}" in check["detail"]
        assert "or make the worker declare what exists" in check["fix"]
        assert {"STORAGE_WORKER_EVENT_STREAM_MAX_AGE=1D", "STORAGE_WORKER_EVENT_STREAM_MAX_BYTES=5242880"} <= \
            set(check["fix"].split())
        # The suggested settings are enough.
        done, checks = doctor(place, env=environment(place, STORAGE_WORKER_EVENT_STREAM_MAX_AGE="1D",
                                                     STORAGE_WORKER_EVENT_STREAM_MAX_BYTES="5M"))
        assert checks["event_stream"]["status"] == "ok", checks["event_stream"]
    finally:
        connection.channel().queue_delete(stream)
        connection.close()


def test_invalid_policy_file_fails(place, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[users.cp]\nops = ["volume.delet"]\n')
    done, checks = doctor(place, env=environment(place, STORAGE_WORKER_POLICY_FILE=str(policy)))
    assert done.returncode == 1
    assert checks["policy"]["status"] == "fail" and "volume.delet" in checks["policy"]["detail"]


@pytest.mark.skipif(RABBITMQCTL is None or os.geteuid() != 0, reason="needs rabbitmqctl as root to add a user")
def test_missing_permissions_name_the_rabbitmqctl_command(place):
    user, password = unique("doctor-user-"), uuid.uuid4().hex

    def ctl(*args: str) -> None:
        subprocess.run([RABBITMQCTL, "-q", *args], check=True, capture_output=True, timeout=60)

    ctl("add_user", user, password)
    try:
        ctl("set_permissions", "-p", "/", user, "^$", "^$", "^$")
        done, checks = doctor(place, amqp_url=f"amqp://{user}:{password}@127.0.0.1:5672/%2F")
        assert done.returncode == 1
        check = checks["permissions"]
        assert check["status"] == "fail" and f"user '{user}'" in check["detail"] and "configure" in check["detail"]
        assert check["fix"].startswith(f"rabbitmqctl set_permissions -p / {user} ")
        assert password not in done.stdout
        # The suggested command is enough.
        command = shlex.split(check["fix"])
        assert command[0] == "rabbitmqctl"
        ctl(*command[1:])
        done, checks = doctor(place, amqp_url=f"amqp://{user}:{password}@127.0.0.1:5672/%2F")
        assert checks["permissions"]["status"] == "ok", checks["permissions"]
    finally:
        ctl("delete_user", user)
