"""Fuzzing the whole command path without a broker: the real worker on the in-memory transport and
libvirt's in-process test driver (as in test_command_path.py), fed batches of generated and mutated
messages. Whatever arrives, each message is answered exactly once (and, when it is no command,
dead-lettered with a reason), its delivery is settled and never handed back, no handler crashes
(`internal`), and every thread of the worker is still running.

The worker's authorization policy lets the fuzzed commands touch only pools named `fuzz-*`, so the
test driver's own `default-pool`, which other unit tests use, is safe from them.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages.operations import OPERATIONS
from tests.mutations import Mutator
from tests.strategies import OPS, bodies, json_values, model_args
from tests.unit.conftest import TEST_DRIVER
from worker.app import Worker
from worker.config import Settings
from worker.transport.memory import MemoryLink
from worker.transport.results import REASON_HEADER

POOL = "fuzz-pool"
VOLUMES = ["a.raw", "b.qcow2", "c.img"]
REPLIES = "replies"


class Fuzzed:
    """The worker under test and the places its fuzzed commands may aim at."""

    def __init__(self, worker: Worker, root: Path, outside: Path):
        self.worker = worker
        self.link: MemoryLink = worker.link
        self.root = root
        self.outside = outside
        self.dead_letter_exchange = worker.topology.dead_letter_exchange
        self.results_exchange = worker.topology.results_exchange


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Fuzzed:
    base = tmp_path_factory.mktemp("fuzz")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    (root / "out").symlink_to(outside)
    (root / "source.raw").write_bytes(b"\0" * 4096)
    policy = base / "policy.toml"
    policy.write_text('[default]\nops = ["*"]\npools = ["fuzz-*"]\n')
    settings = Settings(host_id="fuzz", prefix="fuzz", libvirt_uri=TEST_DRIVER, state_dir=base / "state",
                        allowed_roots=[str(root)], concurrency=2, metrics_port=0, shutdown_grace=5,
                        policy_file=policy, retry_max_seconds=1.0)
    worker = Worker(settings, make_link=MemoryLink)
    worker.start()
    assert worker.gateway.wait_connected(5)
    conn = libvirt.open(TEST_DRIVER)
    pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>{POOL}</name><target><path>{root / POOL}</path>"
                                     f"</target></pool>")
    pool.create(0)
    try:
        yield Fuzzed(worker, root, outside)
    finally:
        worker.stop(grace=5)
        for leftover in conn.listAllStoragePools(0):
            if leftover.name().startswith("fuzz-"):
                if leftover.isActive():
                    leftover.destroy()
                leftover.undefine()
        conn.close()


def aimed(op: str, args: Any, where: dict[str, Any]) -> Any:
    """The args, some of their names replaced by the fuzz pool and its volumes, so that generated
    commands reach the handlers instead of all ending `forbidden` or `not_found`."""
    if not isinstance(args, dict):
        return args
    args = dict(args)
    for key in ("pool", "source_pool"):
        if key in args and where["pool"]:
            args[key] = POOL
    if op.startswith("pool.") and "name" in args and where["pool"]:
        args["name"] = POOL if op != "pool.define" else f"fuzz-{where['suffix']}"
    if op.startswith("volume.") and where["volume"] is not None:
        for key in ("name", "source"):
            if isinstance(args.get(key), str):
                args[key] = where["volume"]
    return args


# AMQP properties as pika decodes them: a short string that is not UTF-8 arrives as bytes.
PROPERTIES = st.fixed_dictionaries({}, optional={
    "message_id": st.one_of(st.text(max_size=10), st.binary(max_size=4)),
    "content_type": st.one_of(st.text(max_size=10), st.binary(max_size=4)),
    "headers": st.dictionaries(st.text(max_size=6), json_values(4), max_size=3),
    "reply_to": st.sampled_from([None, REPLIES]),
})
SEEDS = st.integers(0, 2**32)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """(body, AMQP properties): a generated command aimed at the fuzz pool, any body at all, or a
    command of the seeded mutator of the live fuzz test."""
    kind = draw(st.sampled_from(["aimed", "aimed", "any", "mutated"]))
    if kind == "aimed":
        op = draw(st.sampled_from(OPS))
        where = {"pool": draw(st.booleans()), "volume": draw(st.sampled_from([None, *VOLUMES])),
                 "suffix": draw(st.sampled_from(["p1", "p2"]))}
        args = aimed(op, draw(model_args(op)), where)
        document = {"id": draw(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)), "op": op, "args": args}
        body = json.dumps(document).encode()
    elif kind == "any":
        body = draw(bodies())
    else:
        return _mutated(draw(SEEDS))
    return body, draw(PROPERTIES)


_MUTATOR_PLACES: dict[str, Path] = {}


def _mutated(seed: int) -> tuple[bytes, dict[str, Any]]:
    root = _MUTATOR_PLACES["root"]
    message = Mutator(random.Random(seed), prefix="fuzz-", pool=POOL, root=root, outside_link=root / "out",
                      source_file=root / "source.raw").message()
    properties = dict(message.properties)
    properties["reply_to"] = REPLIES if message.reply else None
    return message.body, properties


def outcome(fuzzed: Fuzzed, delivery, correlation_id: str, command_id: str | None) -> tuple[list, list]:
    """The results and dead letters this delivery caused: replies (by correlation id) or, without
    reply_to, what the results exchange carried for its command id."""
    published = list(fuzzed.link.published)
    dead = [m for m in published if m.exchange == fuzzed.dead_letter_exchange
            and m.properties.correlation_id == correlation_id]
    if delivery.properties.reply_to:
        answers = [m for m in published if m.exchange == "" and m.properties.correlation_id == correlation_id]
    else:
        answers = [m for m in published if m.exchange == fuzzed.results_exchange and command_id is not None
                   and json.loads(m.body)["id"] == command_id]
    return answers, dead


def command_id_of(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


# Each example is a batch through a running worker: a fifth of the profile's examples (20 in CI).
@settings(max_examples=max(20, settings.default.max_examples // 5), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(messages(), min_size=1, max_size=6))
def test_every_message_is_answered_once_or_dead_lettered_and_the_worker_lives(fuzzed, batch):
    _MUTATOR_PLACES["root"] = fuzzed.root
    link = fuzzed.link
    sent = []
    for body, properties in batch:
        properties = dict(properties)
        reply_to = properties.pop("reply_to", REPLIES)
        command_id = command_id_of(body)
        if reply_to is None and command_id is not None:
            # Without reply_to a repeat of an id leaves no trace (duplicates go to reply_to only):
            # a fresh id keeps each message's answer countable.
            fresh = f"{command_id[:90]}-{uuid.uuid4().hex}"
            renamed = body.replace(json.dumps(command_id).encode(), json.dumps(fresh).encode(), 1)
            if command_id_of(renamed) == fresh:
                body, command_id = renamed, fresh
            else:
                reply_to = REPLIES
        correlation_id = uuid.uuid4().hex
        delivery = link.deliver(body, reply_to=reply_to, correlation_id=correlation_id, **properties)
        sent.append((delivery, correlation_id, command_id, body))

    for delivery, correlation_id, command_id, body in sent:
        def settled() -> bool:
            answers, dead = outcome(fuzzed, delivery, correlation_id, command_id)
            return (delivery.delivery_tag in link.requeued or bool(link.unsendable)
                    or (delivery.delivery_tag in link.acked and bool(answers or dead)))
        link.wait(settled, timeout=15)
        assert not link.unsendable, f"published what a broker would refuse: {link.unsendable[0]}"
        assert delivery.delivery_tag not in link.requeued, \
            f"handed back to the queue (the intake crashed): {body[:200]!r}"
        answers, dead = outcome(fuzzed, delivery, correlation_id, command_id)
        results = [json.loads(m.body) for m in answers]
        if dead:
            assert len(dead) == 1 and dead[0].body == body, "dead-lettered once, as it came"
            assert dead[0].properties.headers[REASON_HEADER], "a dead letter says why"
            if delivery.properties.reply_to:
                assert len(results) == 1 and results[0]["op"] is None and results[0]["status"] == "rejected"
        else:
            assert len(results) == 1, f"{len(results)} answers to {body[:200]!r}: {results}"
        for result in results:
            error = result["error"]
            assert result["status"] == "succeeded" or error["message"], result
            # `internal` without libvirt's details: an exception escaped the handler.
            assert error is None or error["code"] != "internal" or error["libvirt"] is not None, \
                f"a handler crashed on {body[:300]!r}: {error}"
            assert result["op"] is None or result["op"] in OPERATIONS
    assert fuzzed.worker.dead_threads() == []
