"""The operator interface as an operator uses it: the console script in a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from messages.client import NoWorker, StorageClient
from tests.conftest import AMQP_URL, unique
from tests.integration.conftest import Tap, delete_broker_objects, ok, rabbitmqctl, remove_pools, wait_for
from worker.config import Settings

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))


def run_cli(harness, *args, timeout=60):
    return subprocess.run([CLI, *args, "--host-id", harness.host, "--prefix", harness.settings.prefix,
                           "--amqp-url", AMQP_URL], capture_output=True, text=True, timeout=timeout)


def test_call_prints_the_result_and_exits_0_on_success(harness, pool, libvirt_conn):
    done = run_cli(harness, "call", "volume.create", f"pool={pool}", "name=cli.qcow2", "capacity=10M", "format=qcow2")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["result"]["capacity"] == 10 * 2**20
    assert "cli.qcow2" in libvirt_conn.storagePoolLookupByName(pool).listVolumes()


def test_call_exits_1_on_failure_and_accepts_json_args(harness, pool):
    done = run_cli(harness, "call", "volume.info", "--args", json.dumps({"pool": pool, "name": "absent"}))
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["status"] == "failed" and result["error"]["code"] == "not_found"


def test_call_with_a_bad_pair_says_so(harness):
    done = run_cli(harness, "call", "volume.create", "capacity=lots")
    assert done.returncode == 1 and "'lots' is not a size" in done.stderr


def test_call_to_a_host_without_worker_names_it(harness):
    done = subprocess.run([CLI, "call", "host.info", "--host-id", "nobody-here", "--prefix",
                           harness.settings.prefix, "--amqp-url", AMQP_URL], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1 and "'nobody-here'" in done.stderr


def test_schema_prints_json_schema():
    done = subprocess.run([CLI, "schema"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert "VolumeCreateCommand" in schema["$defs"]


def test_run_serves_commands_and_drains_on_sigterm(broker_ok, libvirt_conn, tmp_path):
    tag = unique("r")
    settings = Settings(host_id=tag, prefix=f"test-{tag}", amqp_url=AMQP_URL, state_dir=tmp_path / "state",
                        allowed_roots=[str(tmp_path)])
    env = {**os.environ, "STORAGE_WORKER_STATE_DIR": str(tmp_path / "state"),
           "STORAGE_WORKER_ALLOWED_ROOTS": json.dumps([str(tmp_path)]), "STORAGE_WORKER_METRICS_PORT": "0"}
    process = subprocess.Popen([CLI, "run", "--host-id", tag, "--prefix", settings.prefix, "--amqp-url", AMQP_URL],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = None
    try:
        def answers():
            try:
                with StorageClient(AMQP_URL, host_id=tag, prefix=settings.prefix) as client:
                    return client.call("host.info", {}, timeout=10)
            except NoWorker:
                return None
        assert ok(wait_for(lambda: process.poll() is None and answers(), 30, "the worker to answer",
                           interval=0.3))["host_id"] == tag
        events = Tap(settings.topology.events_exchange, f"{tag}.worker.*")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        kinds = [e["type"] for e in events.bodies(wait=1.0)]
        assert kinds == ["storage.worker.offline"]
        lines = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
        assert any(line["message"] == "worker online" for line in lines), "logs are JSON lines by default"
        assert all(line["host"] == tag for line in lines), "every line names the host"
        about_commands = [line for line in lines if "command_id" in line]
        assert about_commands and all("op" in line for line in about_commands)
        assert "guest:guest" not in str(lines), "the AMQP password never appears"
    finally:
        if process.poll() is None:
            process.kill()
        if events is not None:
            events.close()
        remove_pools(f"{tag}-")
        delete_broker_objects(settings)


def test_events_prints_one_line_per_event(harness, pool):
    process = subprocess.Popen([CLI, "events", f"{harness.host}.volume.*", "--prefix", harness.settings.prefix,
                                "--amqp-url", AMQP_URL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        exchange = harness.settings.topology.events_exchange
        wait_for(lambda: f"{exchange}\t{harness.host}.volume.*" in rabbitmqctl("list_bindings", "source_name",
                                                                                 "routing_key"),
                 30, "the follower to bind its queue", interval=0.3)
        ok(harness.client().call("volume.create", {"pool": pool, "name": "seen.raw", "capacity": 4096}))
        # The worker also reports volumes other test runs make in their pools on this libvirtd.
        line = ""
        while f"{pool}/seen.raw" not in line:
            assert select.select([process.stdout], [], [], 30)[0], "no line about seen.raw within 30 s"
            line = process.stdout.readline()
        assert "volume.created" in line and "origin=command" in line and harness.host in line
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
