"""Live fuzzing: a few thousand mutated commands (tests/mutations.py, from a fixed seed) sent to one
real worker on the real broker and the real libvirtd. Each message must be answered exactly once (on
its reply queue, by correlation id; without reply_to, on the results exchange) or dead-lettered with
the worker's reason header; the worker must stay ready throughout (/readyz); and nothing may appear
outside ALLOWED_ROOTS — no file, no pool, no volume.

The allowed root is a 64 MiB tmpfs of the test's own, so that absurd sizes, wipes and downloads end
in `no space` within a second instead of filling the shared disk. FUZZ_SEED and FUZZ_COUNT change the
run (`FUZZ_SEED=7 FUZZ_COUNT=20000 scripts/test tests/integration/test_fuzz.py -s`); the tally is
printed at the end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pika
import pytest

from tests.conftest import AMQP_URL, LIBVIRT_URI, require
from tests.integration.conftest import Harness, ok, remove_pools
from tests.mutations import Message, Mutator
from worker.transport.results import REASON_HEADER

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("FUZZ_SEED", "20261126"))
COUNT = int(os.environ.get("FUZZ_COUNT", "3000"))
ROOT_SIZE = "64m"
SIZE_CAP = 2**30  # see Mutator: 16 times the root, and a clone of it still takes a second
FRAME_OVERHEAD = 8 + 12 + 8  # frame header and end, class, weight and body size; and a margin
WATCHED = [Path("/etc/passwd"), Path("/etc/shadow"), Path("/etc/hostname")]


@dataclass
class Fuzzing:
    harness: Harness
    root: Path  # the allowed root, a small tmpfs
    outside: Path  # a directory outside it, reached through root/out
    pool: str
    port: int


def crashed(result: dict[str, Any]) -> bool:
    """`internal` without a libvirt error: an exception escaped a handler (the runner's catch-all).
    libvirt's own errors that fit no other code are `internal` too, and carry libvirt's details."""
    error = result.get("error") or {}
    return error.get("code") == "internal" and error.get("libvirt") is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def fuzzing(make_worker, tmp_path) -> Iterator[Fuzzing]:
    root, outside = tmp_path / "fuzzroot", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside the allowed root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ROOT_SIZE},mode=0755", "tmpfs", str(root)],
                             capture_output=True, text=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs for the allowed root: {mounted.stderr.strip()}")
    harness = None
    try:
        (root / "out").symlink_to(outside)
        (root / "source.raw").write_bytes(os.urandom(64 * 1024))
        port = free_port()
        harness = make_worker(allowed_roots=[str(root)], metrics_port=port, concurrency=4, retry_max_seconds=2.0)
        pool = harness.name("pool")
        ok(harness.client().call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(root / pool)},
                                                 "build": True, "start": True}))
        yield Fuzzing(harness=harness, root=root, outside=outside, pool=pool, port=port)
    finally:
        if harness is not None:  # before the tmpfs goes: the worker and libvirt let go of it
            harness.worker.stop(grace=10)
            remove_pools(harness.name_prefix)
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def tree(top: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every path under `top` (relative), not descending into `skip` nor following symlinks."""
    found = set()
    for directory, subdirs, files in os.walk(top):
        here = Path(directory)
        subdirs[:] = [d for d in subdirs if here / d not in skip]
        found.update(str((here / name).relative_to(top)) for name in [*subdirs, *files])
    return found


def pools_of(prefix: str) -> dict[str, tuple[str | None, list[str]]]:
    """The test's pools in libvirt: name -> (target path, volume paths)."""
    conn = libvirt.open(LIBVIRT_URI)
    try:
        found = {}
        for pool in conn.listAllStoragePools(0):
            if prefix not in pool.name():
                continue
            target = pool.XMLDesc(0).split("<path>", 1)[1].split("</path>", 1)[0] if "<path>" in pool.XMLDesc(0) \
                else None
            volumes = [v.path() for v in pool.listAllVolumes(0)] if pool.isActive() else []
            found[pool.name()] = (target, volumes)
        return found
    finally:
        conn.close()


class Sender:
    """Publishes raw messages with pika (a reply queue of its own) and collects what comes back:
    replies by correlation id, results from the results exchange, dead letters."""

    def __init__(self, harness: Harness):
        self.topology = harness.settings.topology
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.replies_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.results_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.results_queue, self.topology.results_exchange, "#")
        self.replies: dict[str, list[dict]] = {}
        self.results: dict[str, list[dict]] = {}
        self.dead: dict[str, list[pika.BasicProperties]] = {}
        self.channel.basic_consume(self.replies_queue, self._on_reply, auto_ack=True)
        self.channel.basic_consume(self.results_queue, self._on_result, auto_ack=True)
        self.channel.basic_consume(self.topology.dead_letter_queue, self._on_dead, auto_ack=True)
        self.refused = 0

    def _on_reply(self, _channel, _method, properties, body) -> None:
        self.replies.setdefault(properties.correlation_id, []).append(json.loads(body))

    def _on_result(self, _channel, _method, _properties, body) -> None:
        result = json.loads(body)
        self.results.setdefault(result["id"], []).append(result)

    def _on_dead(self, _channel, _method, properties, _body) -> None:
        self.dead.setdefault(properties.correlation_id, []).append(properties)

    def send(self, message: Message, correlation_id: str) -> bool:
        """False when the broker refused the message (its channel closed): not the worker's to answer."""
        properties = pika.BasicProperties(**message.properties, correlation_id=correlation_id,
                                          reply_to=self.replies_queue if message.reply else None)
        excess = sum(len(piece) for piece in properties.encode()) + FRAME_OVERHEAD - pika.spec.FRAME_MAX_SIZE
        if excess > 0:  # the header frame "just under the broker's frame_max", with this message's other properties
            properties.headers["big"] = properties.headers["big"][:-excess]
        try:
            self.channel.basic_publish(self.topology.commands_exchange, self.topology.command_routing_key,
                                       message.body, properties)
            return True
        except pika.exceptions.AMQPError:
            self.refused += 1
            raise

    def pump(self, seconds: float) -> None:
        self.connection.process_data_events(time_limit=seconds)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def test_thousands_of_mutated_commands_are_each_answered_once_or_dead_lettered(fuzzing, libvirt_conn):
    harness, root = fuzzing.harness, fuzzing.root
    prefix = harness.name_prefix
    mutator = Mutator(random.Random(SEED), prefix=prefix, pool=fuzzing.pool, root=root,
                      outside_link=root / "out", source_file=root / "source.raw", size_cap=SIZE_CAP)
    base = root.parent
    skip = (root, base / "state", base / "roots")
    files_before, outside_before = tree(base, skip), tree(fuzzing.outside)
    watched_before = {path: path.stat().st_mtime_ns for path in WATCHED if path.exists()}
    sender = Sender(harness)
    sent: dict[str, Message] = {}
    ready_checks = Counter()
    started = time.monotonic()
    try:
        for index in range(COUNT):
            message = mutator.message()
            correlation_id = f"fz-{index}-{uuid.uuid4().hex[:8]}"
            sender.send(message, correlation_id)
            sent[correlation_id] = message
            if index % 100 == 99:
                sender.pump(0)  # keep the client's side of the connection moving
            if index % 500 == 499:
                ready_checks[readyz(fuzzing.port)] += 1
        sent_at = time.monotonic()

        def accounted(correlation_id: str, message: Message) -> bool:
            if message.reply:
                return correlation_id in sender.replies
            return correlation_id in sender.dead or (message.command_id or "") in sender.results

        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            sender.pump(0.2)
            missing = [c for c, m in sent.items() if not accounted(c, m)]
            if not missing:
                break
        # A fence: once its answer is in, whatever the worker had answered before it is in too.
        fence = ok(harness.client().call("host.info", {}, timeout=30))
        assert fence["host_id"] == harness.host
        sender.pump(0.5)
        elapsed = time.monotonic() - started
        ready_checks[readyz(fuzzing.port)] += 1
    finally:
        sender.close()

    tally: Counter = Counter()
    libvirt_internal: Counter = Counter()  # libvirt's errors that fit no other code: shown, not failed
    problems: list[str] = []
    for correlation_id, message in sent.items():
        replies = sender.replies.get(correlation_id, [])
        dead = sender.dead.get(correlation_id, [])
        results = sender.results.get(message.command_id or "", []) if not message.reply else []
        answers = replies if message.reply else results
        what = f"{correlation_id} {message.mutations} {message.body[:120]!r}"
        if len(dead) > 1:
            problems.append(f"dead-lettered {len(dead)} times: {what}")
        for properties in dead:
            if not (properties.headers or {}).get(REASON_HEADER):
                problems.append(f"dead-lettered without {REASON_HEADER} (by the broker?): {what}")
        if message.reply and len(replies) != 1:
            problems.append(f"{len(replies)} replies: {what}")
        if not message.reply and not dead and len(results) != 1:
            problems.append(f"{len(results)} results and no dead letter: {what}")
        for answer in answers:
            if crashed(answer):
                problems.append(f"a handler crashed: {answer['error']['message']}: {what}")
        for answer in answers[:1]:
            if (answer["error"] or {}).get("code") == "internal" and not crashed(answer):
                libvirt_internal[answer["error"]["message"][:100]] += 1
        if dead:
            tally[("dead-lettered", "-")] += 1
        elif answers:
            tally[(answers[0]["status"], (answers[0]["error"] or {}).get("code", "-"))] += 1
        else:
            tally[("unaccounted", "-")] += 1

    pools = pools_of(prefix)
    for name, (target, volumes) in pools.items():
        for path in [target, *volumes]:
            if path is not None and not os.path.realpath(path).startswith(f"{root}/"):
                problems.append(f"pool {name}: {path} is outside the allowed root {root} "
                                f"(it resolves to {os.path.realpath(path)})")
    new_files = tree(base, skip) - files_before
    new_outside = tree(fuzzing.outside) - outside_before
    changed = [str(p) for p, mtime in watched_before.items() if p.stat().st_mtime_ns != mtime]

    print(f"\nlive fuzz: seed={SEED} commands={COUNT} in {elapsed:.1f} s (sent in {sent_at - started:.1f} s), "
          f"broker refused={sender.refused}, /readyz {dict(ready_checks)}")
    for (status, code), count in sorted(tally.items(), key=lambda item: -item[1]):
        print(f"  {status:14} {code:12} {count:6}")
    print(f"  pools of the test: {sorted(pools)}; new files outside the root: {sorted(new_files)}; "
          f"in the outside dir: {sorted(new_outside)}; watched files changed: {changed}")
    for message, count in libvirt_internal.most_common(5):
        print(f"  internal from libvirt x{count}: {message}")
    for problem in problems[:40]:
        print("  PROBLEM", problem)

    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
    assert set(ready_checks) == {200}, f"/readyz answered {dict(ready_checks)}"
    assert harness.worker.dead_threads() == []
    assert not new_files and not new_outside and not changed
    assert sum(tally.values()) == COUNT
