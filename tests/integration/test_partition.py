"""A network partition between the worker and the broker (docs/contract.md "Delivery guarantees").

The worker runs in a network namespace of its own and reaches the broker only over a veth pair
(tests/integration/partition.py draws it). The machine's broker listens on 127.0.0.1 alone, so the
host end of the pair carries a TCP relay to it; the partition itself is the veth link taken down
mid-batch: the worker's packets are dropped without a reset, exactly as when a switch port dies, so
the worker learns of it only from its AMQP heartbeat, and the broker drops the connection and puts
the worker's unacknowledged commands back in the queue. The link stays down past both, then comes
back. The relay is only the path to a broker bound to loopback; it passes bytes and nothing else.

The workload is the fault tests' 500 commands over 100 volumes (tests/integration/test_faults.py), so
the same checks apply: one terminal result per command, none lost, no side effect twice, and the
libvirt state those commands imply. On top: /readyz says 503 while the link is down and 200 after,
and the results the worker made while cut off are published once the link is back.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import require
from tests.integration.conftest import broker_connection_pid, wait_for
from tests.integration.partition import Partition
from tests.integration.test_faults import libvirt_state, rig, workload_plan  # noqa: F401 (rig is a fixture)

pytestmark = pytest.mark.integration

HEARTBEAT = 3  # seconds: short, so that a cut longer than it keeps the test under a minute
MiB = 2**20
WIPES = 16  # slow commands in the middle of the batch: the worker is busy with them when the link goes


@pytest.fixture
def partition():
    require(os.geteuid() == 0 and shutil.which("ip") is not None,
            "a network partition needs root and iproute2 (ip netns, veth)")
    made = Partition()
    yield made
    made.close()


def finished_at(result: dict) -> datetime:
    return datetime.fromisoformat(result["finished_at"])


def test_a_cut_longer_than_the_heartbeat_mid_batch_loses_nothing_and_doubles_nothing(rig, partition):  # noqa: F811
    port = random.randint(20000, 40000)  # the namespace is new: any port is free there
    worker = rig.worker(launcher=partition.command(), amqp_url=partition.broker_url, metrics_port=port,
                        amqp_heartbeat=HEARTBEAT)
    worker.start()
    worker.wait_online()

    def ready() -> int:
        return partition.http_status(port, "/readyz")

    assert ready() == 200

    plan, expected = workload_plan(rig.pool)
    wiped = {f"w{i:02d}.raw": 64 * MiB for i in range(WIPES)}
    for name, size in wiped.items():
        rig.allocated_volume(name, size)
    expected |= wiped
    plan[100:100] = [("volume.wipe", {"pool": rig.pool, "name": name, "algorithm": "nnsa"}) for name in wiped]
    for op, args in plan:
        rig.workload.send(op, args)
    wait_for(lambda: rig.workload.answered() >= 100, 60, "the first 100 results (the batch under way)")

    began = time.monotonic()
    partition.cut()
    cut_at = datetime.now(UTC)  # after: a result finished while `ip` ran may still have got out
    try:
        wait_for(lambda: ready() == 503, 2 * (HEARTBEAT + 5) + 10, "/readyz to say 503 during the cut",
                 interval=0.5)
        detected = time.monotonic() - began
        # The broker sends a frame every heartbeat / 2 s: a whole heartbeat without one is a cut
        # (worker/transport/silence.py), well before pika's own check (after heartbeat + 5 s at best).
        assert detected < HEARTBEAT + 5, f"/readyz said 503 only {detected:.1f} s into the cut"
        connection = f"storage-worker {rig.tag}"
        wait_for(lambda: broker_connection_pid(connection) is None, 4 * HEARTBEAT + 20,
                 "the broker to drop the worker's connection", interval=0.5)
        wait_for(lambda: '"lost the broker connection' in worker.log_path.read_text(), 2 * (HEARTBEAT + 5) + 10,
                 "the worker to give up its connection (pika's heartbeat check)", interval=0.5)
        assert ready() == 503, "still not ready while the link is down"
        rig.workload.collect()
        answered_during_cut = {c for c in rig.workload.tally.sent if rig.workload.tally.originals(c)}
    finally:
        healed_at = datetime.now(UTC)
        partition.heal()
    cut_seconds = time.monotonic() - began
    assert cut_seconds > HEARTBEAT

    wait_for(lambda: ready() == 200, 60, "/readyz to say 200 after the cut", interval=0.5)
    resumed = time.monotonic() - began - cut_seconds
    rig.workload.wait_all(timeout=120)
    print(f"[partition] heartbeat={HEARTBEAT}s cut={cut_seconds:.1f}s not-ready-after={detected:.1f}s "
          f"ready-again-after-heal={resumed:.1f}s answered-before-cut-ended={len(answered_during_cut)}")
    tally = rig.workload.tally
    tally.report(f"veth cut {cut_seconds:.0f} s, heartbeat {HEARTBEAT} s", reruns=rig.reruns())
    assert len(tally.sent) == len(plan) == 500 + WIPES
    assert tally.missing() == [], f"{len(tally.missing())} commands got no result"
    assert tally.repeated() == [], "an id got two different non-duplicate results"
    assert tally.double_side_effects() == [], "a command's side effect happened twice"
    assert dict(tally.statuses()) == {"succeeded": len(plan)}
    assert libvirt_state(rig.pool) == expected
    made_during_cut = [c for c in tally.sent if cut_at < finished_at(tally.originals(c)[0]) < healed_at]
    print(f"[partition] results made during the cut, published after it: {len(made_during_cut)}")
    assert made_during_cut, "the worker went on with the commands it held while cut off"
    assert not set(made_during_cut) & answered_during_cut, "nothing the worker made crossed the cut link"
    assert worker.running() and worker.starts == 1, "the same process rode out the partition"
