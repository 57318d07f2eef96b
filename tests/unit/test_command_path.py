"""The whole command path without a broker: the real worker (intake, journal, custody, scheduler,
settlement, handlers) on the in-memory transport (worker.transport.memory) and libvirt's in-process
test driver. What these show about delivery, dedupe, custody and cancel holds on RabbitMQ too: the
integration tests (tests/integration/) prove the same on the real broker and the real libvirtd.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from messages.command import decode
from tests.unit.conftest import TEST_DRIVER
from worker.app import Worker
from worker.config import Settings
from worker.execution.scheduler import Job
from worker.state.journal import Journal
from worker.transport.memory import MemoryLink

POOL = "default-pool"  # the test driver's running pool


class Path:
    """A worker on a MemoryLink, and what a test needs to drive it."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.link: MemoryLink = worker.link
        self.results_exchange = worker.topology.results_exchange

    def send(self, op: str, args: dict[str, Any] | None = None, *, command_id: str | None = None,
             **properties: Any):
        command_id = command_id or uuid.uuid4().hex
        body = {"id": command_id, "op": op, "args": args or {}}
        if "deadline" in properties:
            body["deadline"] = properties.pop("deadline")
        return command_id, self.link.deliver(body, correlation_id=command_id, **properties)

    def results(self, command_id: str) -> list[dict[str, Any]]:
        """What the results exchange carried for this id."""
        return [body for _, body in self.link.sent_to(self.results_exchange) if body["id"] == command_id]

    def replies(self, command_id: str) -> list[dict[str, Any]]:
        return [body for _, body in self.link.sent_to("") if body["id"] == command_id]

    def result(self, command_id: str, timeout: float = 5.0) -> dict[str, Any]:
        self.link.wait(lambda: self.results(command_id), timeout)
        return self.results(command_id)[0]

    def call(self, op: str, args: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        command_id, delivery = self.send(op, args, **kwargs)
        result = self.result(command_id)
        self.link.wait(lambda: delivery.delivery_tag in self.link.acked)
        return result

    def block_executors(self) -> threading.Event:
        """Occupy every executor thread with a job that waits for the returned gate: commands
        delivered from now on wait in the scheduler's queue."""
        gate = threading.Event()
        started = threading.Semaphore(0)

        def hold(_job: Job) -> None:
            started.release()
            gate.wait(10)

        for _ in range(self.worker.settings.concurrency):
            self.worker.scheduler.submit(Job(id=f"gate-{uuid.uuid4().hex}", claims=(), run=hold))
        for _ in range(self.worker.settings.concurrency):
            assert started.acquire(timeout=5)
        return gate


@pytest.fixture
def make_path(tmp_path):
    made: list[Worker] = []

    def make(state: str = "state", **overrides: Any) -> Path:
        settings = Settings(**{"host_id": "fast", "prefix": "fast", "libvirt_uri": TEST_DRIVER,
                               "state_dir": tmp_path / state, "allowed_roots": [str(tmp_path)], "concurrency": 2,
                               "metrics_port": 0, "shutdown_grace": 5, **overrides})
        worker = Worker(settings, make_link=MemoryLink)
        made.append(worker)
        worker.start()
        assert worker.gateway.wait_connected(5)
        return Path(worker)

    yield make
    for worker in made:
        worker.stop(grace=5)


@pytest.fixture
def path(make_path) -> Path:
    return make_path()


def volume_name() -> str:
    return f"v{uuid.uuid4().hex[:8]}.raw"


def test_a_command_is_answered_once_on_both_routes_and_acked_after_the_confirm(path):
    name = volume_name()
    result = path.call("volume.create", {"pool": POOL, "name": name, "capacity": 2**20})
    assert result["status"] == "succeeded" and result["result"]["changed"] is True
    assert len(path.results(result["id"])) == 1 and len(path.replies(result["id"])) == 1
    routing = [key for key, body in path.link.sent_to(path.results_exchange) if body["id"] == result["id"]]
    assert routing == ["fast.volume.create.succeeded"]


def test_a_short_command_is_acked_only_once_its_result_is_confirmed(path):
    path.link.hold_confirms()
    command_id, delivery = path.send("volume.list", {"pool": POOL})
    path.result(command_id)
    assert delivery.delivery_tag not in path.link.acked, "acked before the broker confirmed the result"
    path.link.confirm_held()
    path.link.wait(lambda: delivery.delivery_tag in path.link.acked)


def test_a_repeated_id_is_answered_from_the_journal_without_running_again(path):
    name = volume_name()
    command_id = f"create-{name}"
    args = {"pool": POOL, "name": name, "capacity": 2**20}
    first = path.call("volume.create", args, command_id=command_id)
    path.worker.gateway.connection().storagePoolLookupByName(POOL).storageVolLookupByName(name).delete(0)
    _, again = path.send("volume.create", args, command_id=command_id)
    path.link.wait(lambda: again.delivery_tag in path.link.acked)
    replies = path.replies(command_id)
    assert [r["duplicate"] for r in replies] == [False, True]
    assert replies[1]["finished_at"] == first["finished_at"], "the stored result, not a new run"
    assert len(path.results(command_id)) == 1, "the results exchange saw the original once"
    assert name not in path.worker.gateway.connection().storagePoolLookupByName(POOL).listVolumes(), \
        "the create did not run a second time"


def test_a_repeat_while_the_command_waits_gets_the_one_result_as_duplicate(path):
    gate = path.block_executors()
    name = volume_name()
    args = {"pool": POOL, "name": name, "capacity": 2**20}
    command_id, first = path.send("volume.create", args)
    _, repeat = path.send("volume.create", args, command_id=command_id)
    gate.set()
    path.link.wait(lambda: {first.delivery_tag, repeat.delivery_tag} <= set(path.link.acked))
    assert [r["duplicate"] for r in path.replies(command_id)] == [False, True]


def test_the_same_id_with_other_arguments_is_rejected_as_a_conflict(path):
    name = volume_name()
    command_id = f"c-{name}"
    path.call("volume.create", {"pool": POOL, "name": name, "capacity": 2**20}, command_id=command_id)
    _, other = path.send("volume.create", {"pool": POOL, "name": name, "capacity": 2**21}, command_id=command_id)
    path.link.wait(lambda: other.delivery_tag in path.link.acked)
    conflict = path.replies(command_id)[-1]
    assert conflict["status"] == "rejected" and conflict["error"]["code"] == "conflict"
    assert "already used for volume.create with other arguments" in conflict["error"]["message"]


@pytest.mark.parametrize("op, args, status, code", [
    ("volume.info", {"pool": POOL, "name": "missing.raw"}, "failed", "not_found"),
    ("volume.create", {"pool": POOL, "name": "x.raw", "capacity": -1}, "rejected", "invalid"),
    ("volume.upload", {"pool": POOL, "name": "x.raw", "source": {"path": "/etc/passwd"}}, "rejected", "forbidden"),
    ("job.cancel", {"id": "never-sent"}, "failed", "not_found"),
])
def test_results_of_every_failing_status(path, op, args, status, code):
    result = path.call(op, args)
    assert (result["status"], result["error"]["code"]) == (status, code), result


def test_a_command_past_its_deadline_is_rejected_expired(path):
    deadline = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    result = path.call("volume.list", {"pool": POOL}, deadline=deadline)
    assert (result["status"], result["error"]["code"]) == ("rejected", "expired")


def test_a_message_that_is_not_a_command_is_answered_and_dead_lettered(path):
    delivery = path.link.deliver(b"\xff not json", message_id="garbage-1")
    path.link.wait(lambda: delivery.delivery_tag in path.link.acked)
    answer = [body for _, body in path.link.sent_to(path.results_exchange) if body["id"] == "garbage-1"]
    assert answer[0]["status"] == "rejected" and "not UTF-8" in answer[0]["error"]["message"]
    dead = [m for m in path.link.published if m.exchange == path.worker.topology.dead_letter_exchange]
    assert [m.body for m in dead] == [b"\xff not json"]
    assert "x-storage-worker-reason" in dead[0].properties.headers


def test_a_message_id_that_is_not_utf8_names_the_answer_escaped(path):
    """Found by test_fuzz_command_path.py: pika hands a short string that is not UTF-8 over as
    bytes, the result could not be made, and the intake gave the message back to the queue again
    and again (the broker's delivery limit dead-lettered it in the end, without an answer)."""
    delivery = path.link.deliver(b"not json", message_id=b"id-\xfe", correlation_id="c-1")
    path.link.wait(lambda: delivery.delivery_tag in path.link.acked)
    assert delivery.delivery_tag not in path.link.requeued
    answer = [body for _, body in path.link.sent_to("") if body["id"] == "id-\\xfe"]
    assert len(answer) == 1 and answer[0]["status"] == "rejected"
    dead = [m for m in path.link.published if m.exchange == path.worker.topology.dead_letter_exchange]
    assert [m.properties.message_id for m in dead] == [b"id-\xfe"], "the dead letter keeps the original"


@pytest.mark.parametrize("headers, dropped", [
    ({"trace": "abc"}, None),
    ({"big": "h" * 130_900}, "bytes with the reason, over the 65536 a copy may"),  # just under a frame
    ({"ratio": 2.5}, "pika cannot send the original headers again"),  # what other clients may send
])
def test_a_dead_letter_carries_the_original_headers_only_when_they_can_be_sent(path, headers, dropped):
    """Found by the live fuzz test: the copy of headers just under the broker's frame size, plus the
    reason, no longer fit in a frame; the broker closed the connection, and the copy, sent again at
    every reconnect, closed it again: the worker never served another command. Headers pika cannot
    encode (a float) would have waited in the link's outbox for ever, the message never settled."""
    delivery = path.link.deliver(b"not json", message_id="dead-1", headers=headers)
    path.link.wait(lambda: delivery.delivery_tag in path.link.acked)
    dead = [m for m in path.link.published if m.exchange == path.worker.topology.dead_letter_exchange]
    assert len(dead) == 1 and dead[0].body == b"not json" and not path.link.unsendable
    copied = dead[0].properties.headers
    assert "not JSON" in copied["x-storage-worker-reason"]
    if dropped is None:
        assert copied["trace"] == "abc" and "x-storage-worker-headers-dropped" not in copied
    else:
        assert dropped in copied["x-storage-worker-headers-dropped"] and set(copied) == {
            "x-storage-worker-reason", "x-storage-worker-headers-dropped"}


def test_a_stored_result_waiting_for_its_confirm_goes_into_custody_without_an_operation(make_path, caplog):
    """Found by the live fuzz test: a repeat of a rejected command (unknown op) whose result the
    broker had not confirmed yet waits as a placeholder; when it became overdue for custody, the
    custody pass failed on its empty op, every heartbeat, and pruned and scanned nothing any more."""
    path = make_path(own_after=0.5)
    path.link.hold_confirms()
    body = {"id": "unconfirmed-1", "op": "volume.explode", "args": {}}
    first = path.link.deliver(body, correlation_id="first")
    path.link.wait(lambda: any(m.properties.correlation_id == "first" for m in path.link.published))
    again = path.link.deliver(body, correlation_id="again")
    path.link.wait(lambda: again.delivery_tag in path.link.acked, timeout=10)  # custody took it
    assert first.delivery_tag not in path.link.acked, "the first waits for its confirm"
    assert "custody pass failed" not in caplog.text
    path.link.confirm_held()
    path.link.wait(lambda: first.delivery_tag in path.link.acked)


def test_a_queued_command_is_cancelled_before_it_starts(path):
    gate = path.block_executors()
    name = volume_name()
    target, _ = path.send("volume.create", {"pool": POOL, "name": name, "capacity": 2**20})
    cancel = path.call("job.cancel", {"id": target})
    assert cancel["result"] == {"id": target, "state": "cancelled"}
    gate.set()
    cancelled = path.result(target)
    assert (cancelled["status"], cancelled["error"]["code"]) == ("cancelled", "cancelled")
    assert name not in path.worker.gateway.connection().storagePoolLookupByName(POOL).listVolumes()


def test_a_running_upload_is_cancelled_and_a_running_create_is_not_cancellable(make_path, tmp_path):
    """The upload reads from a URL that accepts the connection and sends nothing: it runs until
    job.cancel stops it. The journal took custody of it at once (a long job), so its delivery was
    acknowledged before it ended."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/image.raw"
    path = make_path(url_allowlist=[url])
    name = volume_name()
    path.call("volume.create", {"pool": POOL, "name": name, "capacity": 2**20})
    upload, delivery = path.send("volume.upload", {"pool": POOL, "name": name, "source": {"url": url}})
    path.link.wait(lambda: delivery.delivery_tag in path.link.acked)
    assert not path.results(upload), "acknowledged under custody while still running"
    path.link.wait(lambda: path.worker.scheduler.find(upload) is not None
                   and path.worker.scheduler.find(upload).started)
    assert path.call("job.cancel", {"id": upload})["result"]["state"] == "cancelling"
    result = path.result(upload)
    assert (result["status"], result["error"]["code"]) == ("cancelled", "cancelled")
    assert path.call("job.cancel", {"id": upload})["result"]["state"] == "finished"
    silent.close()


def test_drain_returns_unstarted_commands_to_the_queue(path):
    gate = path.block_executors()
    _, queued = path.send("volume.list", {"pool": POOL})
    path.link.wait(lambda: path.worker.scheduler.counts()[0] == 1)
    stopper = threading.Thread(target=path.worker.stop, kwargs={"grace": 5})
    stopper.start()
    path.link.wait(lambda: queued.delivery_tag in path.link.requeued)
    gate.set()
    stopper.join(10)
    assert queued.delivery_tag not in path.link.acked


def test_a_command_held_by_a_dead_owner_is_resumed_by_the_next_worker(make_path, tmp_path):
    """A journal row owned by a worker whose heartbeat is gone (what a SIGKILL leaves, once the
    heartbeat is stale): the next worker on the same state dir runs it and publishes its result to
    the stored reply address."""
    name = volume_name()
    body = {"id": f"orphan-{name}", "op": "volume.create", "args": {"pool": POOL, "name": name, "capacity": 4096}}
    journal = Journal(tmp_path / "shared" / "journal.sqlite3")
    command = decode(json.dumps(body).encode())
    journal.receive(command.id, command.fingerprint, command.op, body=json.dumps(body).encode(),
                    reply_to="replies", correlation_id=command.id)
    journal.own(command.id, "gone-host:1:0")  # an owner whose heartbeat stopped: no owner row at all
    journal.close()
    path = make_path(state="shared")
    resumed = path.result(command.id)
    assert resumed["status"] == "succeeded" and resumed["result"]["name"] == name
    assert [r["id"] for r in path.replies(command.id)] == [command.id]


def test_a_redelivery_to_the_standby_of_a_command_the_active_worker_still_runs_is_not_run_twice(make_path):
    """Hot standby: closing the active worker's connection hands its unacknowledged deliveries to
    the standby (same host id, same journal) while the active one still runs them. The standby
    leaves the command to the live process that holds it — acknowledged, in the journal's custody
    for that holder, no result of its own — and the one result comes from the active worker."""
    active = make_path(state="shared")
    standby = make_path(state="shared")
    gate = active.block_executors()
    name = volume_name()
    command_id, _ = active.send("volume.create", {"pool": POOL, "name": name, "capacity": 4096})
    active.link.wait(lambda: active.worker.scheduler.counts()[0] == 1)
    _, redelivered = standby.send("volume.create", {"pool": POOL, "name": name, "capacity": 4096},
                                  command_id=command_id)
    standby.link.wait(lambda: redelivered.delivery_tag in standby.link.acked)
    gate.set()
    result = active.result(command_id)
    assert result["status"] == "succeeded" and not result["duplicate"]
    assert standby.results(command_id) == [] and standby.replies(command_id) == []
    entry = active.worker.journal.get(command_id)
    assert entry.owner == entry.runner == active.worker.owner != standby.worker.owner
