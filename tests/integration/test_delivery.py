"""Delivery behaviour on the real broker: acks after confirmed results, redelivery answered without a
second side effect, heartbeats during long operations, parallel and serialized execution."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.integration.conftest import (broker_connection_pid, call_async, ok, queue_depth, rabbitmqctl,
                                        wait_for)

pytestmark = pytest.mark.integration

MiB = 2**20
GiB = 2**30


def allocated_volume(client, pool, name, size):
    return ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": size, "allocation": size}))


def interval(result):
    return datetime.fromisoformat(result.started_at.isoformat()), datetime.fromisoformat(result.finished_at.isoformat())


def test_redelivery_after_the_channel_closed_before_the_ack_repeats_no_side_effect(harness, client, pool, tap):
    results = tap(harness.settings.topology.results_exchange, f"{harness.host}.#")
    allocated_volume(client, pool, "slow.raw", GiB)
    thread, out = call_async(harness.client, "volume.delete", {"pool": pool, "name": "slow.raw", "wipe": True})
    wait_for(lambda: harness.worker.scheduler.counts()[1] == 1, 10, "the wipe to start")
    connection = f"storage-worker {harness.host}"
    pid = broker_connection_pid(connection)
    rabbitmqctl("close_connection", pid, "test: drop the worker's connection mid-operation")
    thread.join(120)
    assert out, "the caller got no result"
    result = out[0]
    assert result.status.value == "succeeded" and result.result["changed"] is True and not result.duplicate
    wait_for(lambda: queue_depth(harness.settings.topology.command_queue) == 0, 15,
             "the redelivered command to be acknowledged")
    published = [r for r in results.bodies(wait=1.0) if r["id"] == result.id]
    assert [r["duplicate"] for r in published] == [False], "storage.results carries the result exactly once"
    assert published[0]["result"]["changed"] is True
    assert broker_connection_pid(connection) not in (None, pid), "the worker reconnected"
    # The volume is gone and a new command on the same name is an ordinary converging delete.
    assert ok(client.call("volume.delete", {"pool": pool, "name": "slow.raw"}))["changed"] is False


def test_heartbeats_survive_an_operation_longer_than_three_intervals(make_worker):
    harness = make_worker(amqp_heartbeat=2)
    client = harness.client()
    pool = harness.running_pool(client)
    allocated_volume(client, pool, "long.raw", 2 * GiB)
    pid = broker_connection_pid(f"storage-worker {harness.host}")
    # Four passes of scrub over 2 GiB: far longer than three 2 s heartbeat intervals on any disk.
    result = client.call("volume.wipe", {"pool": pool, "name": "long.raw", "algorithm": "nnsa"}, timeout=300)
    assert result.status.value == "succeeded", result
    started, finished = interval(result)
    assert (finished - started).total_seconds() > 3 * 2, "the operation must outlast three heartbeat intervals"
    assert broker_connection_pid(f"storage-worker {harness.host}") == pid, "the worker's connection survived"
    assert ok(client.call("host.info", {}))["host_id"] == harness.host


def test_different_volumes_run_in_parallel_and_one_volume_is_serialized(harness, client, pool):
    for name in ("a.raw", "b.raw", "c.raw"):
        allocated_volume(client, pool, name, 512 * MiB)

    calls = [call_async(harness.client, "volume.delete", {"pool": pool, "name": n, "wipe": True})
             for n in ("a.raw", "b.raw")]
    results = [_joined(thread, out) for thread, out in calls]
    (a_start, a_end), (b_start, b_end) = (interval(r) for r in results)
    assert a_start < b_end and b_start < a_end, "deletes of different volumes overlapped"

    calls = [call_async(harness.client, "volume.delete", {"pool": pool, "name": "c.raw", "wipe": True})
             for _ in range(2)]
    first, second = sorted((_joined(thread, out) for thread, out in calls), key=lambda r: r.started_at)
    assert second.started_at >= first.finished_at, "operations on one volume never overlap"
    assert [first.result["changed"], second.result["changed"]] == [True, False]


def test_pool_wide_operation_waits_for_running_volume_operations(harness, client, pool):
    allocated_volume(client, pool, "busy.raw", 512 * MiB)
    wipe_thread, wipe_out = call_async(harness.client, "volume.delete", {"pool": pool, "name": "busy.raw",
                                                                       "wipe": True})
    wait_for(lambda: harness.worker.scheduler.counts()[1] == 1, 10, "the wipe to start")
    time.sleep(0.2)
    refresh = ok_result(client.call("pool.refresh", {"name": pool}))
    wipe = _joined(wipe_thread, wipe_out)
    assert refresh.started_at >= wipe.finished_at


def ok_result(result):
    ok(result)
    return result


def _joined(thread, out):
    thread.join(120)
    assert out, "no result"
    ok(out[0])
    return out[0]
