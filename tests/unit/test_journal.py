"""worker.state.journal.Journal: the durable record of command ids, states and terminal results."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timezone

import pytest

from messages.results import Result
from worker.state.journal import Journal, State


def result(command_id: str, status: str = "succeeded", op: str | None = "volume.create") -> Result:
    now = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=timezone.utc).isoformat()
    return Result.model_validate({
        "id": command_id, "op": op, "host": "kvm-01", "status": status,
        "result": {"pool": "images", "name": "vm1", "changed": True} if status == "succeeded" else None,
        "error": None if status == "succeeded" else
        {"code": "invalid", "message": "capacity must be positive", "retryable": False, "libvirt": None},
        "attempts": 1, "duplicate": False, "received_at": now, "started_at": now, "finished_at": now,
    })


@pytest.fixture
def journal():
    j = Journal(":memory:")
    yield j
    j.close()


def test_receive_records_a_new_id_once(journal):
    assert journal.receive("c1", "fp1", "volume.create") is True
    assert journal.receive("c1", "fp-other", "volume.delete") is False
    entry = journal.get("c1")
    assert (entry.state, entry.fingerprint, entry.op) == (State.received, "fp1", "volume.create")
    assert entry.result is None and entry.published is False


def test_unknown_id_has_no_entry(journal):
    assert journal.get("never") is None


def test_a_command_moves_received_running_finished_published(journal):
    journal.receive("c1", "fp1", "volume.create")
    assert journal.start("c1", "owner-a", 15) is None
    assert journal.get("c1").state == State.running
    journal.finish("c1", "fp1", result("c1"))
    entry = journal.get("c1")
    assert entry.state == State.finished and entry.published is False
    assert entry.result == result("c1")  # the stored result reads back equal, timestamps included
    journal.mark_published("c1")
    assert journal.get("c1").published is True


def test_one_live_process_runs_a_command_of_a_shared_journal(tmp_path):
    """A hot standby shares the journal: a command the broker hands to it while the process that
    started it is alive (it only lost its connection) is not run a second time."""
    active, standby = Journal(tmp_path / "j.sqlite3"), Journal(tmp_path / "j.sqlite3")
    try:
        active.heartbeat("owner-a")
        standby.heartbeat("owner-b")
        active.receive("c1", "fp1", "volume.delete")
        assert active.start("c1", "owner-a", 15) is None
        assert standby.start("c1", "owner-b", 15) == "owner-a", "the live runner keeps its claim"
        assert active.start("c1", "owner-a", 15) is None, "its own claim again (a redelivery to it)"
        active.retire("owner-a")  # its process stopped: the claim goes with it
        assert standby.start("c1", "owner-b", 15) is None
        assert active.start("c1", "owner-a", 15) == "owner-b"
    finally:
        active.close()
        standby.close()


def test_a_stale_or_vanished_runner_holds_no_claim(journal, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    journal.heartbeat("owner-a")
    journal.receive("c1", "fp1", "volume.delete")
    assert journal.start("c1", "owner-a", 15) is None
    clock[0] += 10
    assert journal.start("c1", "owner-b", 15) == "owner-a"
    clock[0] += 6  # no heartbeat for 16 s
    assert journal.start("c1", "owner-b", 15) is None


def test_finish_inserts_a_row_for_an_id_never_received(journal):
    rejected = result("bad-1", status="rejected", op=None)
    journal.finish("bad-1", "fp-bad", rejected)
    entry = journal.get("bad-1")
    assert entry.state == State.finished
    assert entry.fingerprint == "fp-bad" and entry.op is None
    assert entry.result.status.value == "rejected" and entry.result.error.code.value == "invalid"
    assert journal.receive("bad-1", "fp-bad", None) is False  # a re-send is now a known id


def test_finish_keeps_the_original_fingerprint(journal):
    journal.receive("c1", "fp1", "volume.create")
    journal.finish("c1", "fp-later", result("c1"))
    assert journal.get("c1").fingerprint == "fp1"


def test_prune_removes_only_old_finished_rows_no_owner_may_still_publish(journal, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    journal.receive("old-published", "f", "volume.create")
    journal.finish("old-published", "f", result("old-published"))
    journal.mark_published("old-published")
    journal.finish("old-unpublished", "f", result("old-unpublished"))
    journal.receive("old-owned-unpublished", "f", "volume.clone")
    journal.own("old-owned-unpublished", "owner-a")
    journal.finish("old-owned-unpublished", "f", result("old-owned-unpublished"))
    journal.receive("old-running", "f", "volume.create")
    journal.start("old-running", "owner-a", 15)
    journal.receive("old-received", "f", "volume.create")
    clock[0] += 3600
    journal.finish("new-published", "f", result("new-published"))
    journal.mark_published("new-published")
    clock[0] += 10

    assert journal.prune(older_than_seconds=60) == 2
    assert journal.get("old-published") is None
    assert journal.get("old-unpublished") is None, "no owner resumes it: old news after the retention"
    for kept in ("old-owned-unpublished", "old-running", "old-received", "new-published"):
        assert journal.get(kept) is not None, kept
    assert journal.prune(older_than_seconds=60) == 0
    assert journal.prune(older_than_seconds=0) == 1  # new-published is 10 s old now
    assert journal.get("new-published") is None


def test_the_journal_survives_closing_and_reopening(tmp_path):
    path = tmp_path / "state" / "journal.sqlite"  # the directory is created
    first = Journal(path)
    first.receive("running-1", "fp1", "volume.upload")
    first.start("running-1", "owner-a", 15)
    first.receive("done-1", "fp2", "volume.create")
    first.finish("done-1", "fp2", result("done-1"))
    first.mark_published("done-1")
    first.close()

    again = Journal(path)
    try:
        assert again.get("running-1").state == State.running
        done = again.get("done-1")
        assert done.state == State.finished and done.published and done.result.id == "done-1"
        assert again.receive("done-1", "fp2", "volume.create") is False
    finally:
        again.close()


def test_a_file_journal_uses_write_ahead_logging(tmp_path):
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_confirmed_result_reads_as_published_at_once_and_is_written_with_the_next_result(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.receive("a", "f", "volume.create")
    journal.finish("a", "f", result("a"))
    journal.mark_published("a")
    assert journal.get("a").published, "read through the confirmed set"
    assert not Journal(path).get("a").published, "not written yet: another process sees it unconfirmed"
    journal.finish("b", "f", result("b"))
    assert Journal(path).get("a").published, "written with the next result"


def test_confirmed_flags_are_written_by_the_heartbeat_and_on_close(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    for command_id in ("a", "b"):
        journal.finish(command_id, "f", result(command_id))
    journal.mark_published("a")
    journal.heartbeat("owner")
    assert Journal(path).get("a").published
    journal.mark_published("b")
    journal.close()
    assert Journal(path).get("b").published


def test_a_confirmed_event_leaves_the_outbox_at_once_and_is_deleted_with_the_next_write(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    first = journal.park("events", "h.pool.started", b"{}", "{}")
    journal.unpark([first])
    assert journal.parked() == [], "read through the confirmed set"
    assert [p.seq for p in Journal(path).parked()] == [first], "not deleted yet: another process still has it"
    second = journal.park("events", "h.pool.stopped", b"{}", "{}")
    assert [p.seq for p in Journal(path).parked()] == [second], "deleted with the next event parked"


def test_the_count_is_read_on_its_own_connection_and_sees_every_commit(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    assert journal.count() == 0
    for command_id in ("a", "b", "c"):
        journal.receive(command_id, "f", "volume.create")
    journal.finish("d", "f", result("d"))
    assert journal.count() == 4
    journal.finish_later("e", "f", result("e", op="volume.info"))
    assert journal.count() == 5, "a read's result waiting to be written counts"
    journal.close()


def test_a_read_result_stored_later_is_read_from_memory_until_the_next_heartbeat(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.finish_later("r", "f", result("r", op="volume.info"))
    assert journal.known("r")
    entry = journal.get("r")
    assert (entry.state, entry.fingerprint, entry.result.id, entry.published) == (State.finished, "f", "r", False)
    assert Journal(path).get("r") is None, "not written yet"
    journal.mark_published("r")
    assert journal.get("r").published
    journal.finish("w", "f", result("w"))
    journal.park("events", "h.pool.started", b"{}", "{}")
    assert Journal(path).get("r") is None, "other writes do not carry it"
    assert journal.get("r").published, "nor lose its confirmed flag"
    journal.heartbeat("owner")
    stored = Journal(path).get("r")
    assert (stored.state, stored.result.op, stored.published) == (State.finished, "volume.info", True), \
        "written with the heartbeat, before its confirmed flag"


def test_read_results_stored_later_are_written_by_the_heartbeat_and_on_close(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.finish_later("a", "f", result("a", op="volume.info"))
    journal.heartbeat("owner")
    assert Journal(path).get("a").state is State.finished
    journal.finish_later("b", "f", result("b", op="volume.list"))
    journal.close()
    assert Journal(path).get("b").state is State.finished


def test_read_results_stored_later_are_written_at_once_when_enough_wait(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.state.deferred.FINISHED_LATER_AT", 3)
    path = tmp_path / "journal.db"
    journal = Journal(path)
    for command_id in ("a", "b"):
        journal.finish_later(command_id, "f", result(command_id, op="volume.info"))
    assert Journal(path).get("a") is None
    journal.finish_later("c", "f", result("c", op="volume.info"))
    assert [Journal(path).get(i).state for i in "abc"] == [State.finished] * 3


def test_read_results_stored_later_are_written_at_once_when_their_bytes_add_up(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.state.deferred.FINISHED_LATER_BYTES", 1000)
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.finish_later("small", "f", result("small", op="volume.info"))
    assert Journal(path).get("small") is None
    journal.finish_later("big", "f", result("big", op="volume.list"), body="x" * 1000)
    assert Journal(path).get("small").state is State.finished, "written together with the big one"
    journal.finish_later("next", "f", result("next", op="volume.info"))
    assert Journal(path).get("next") is None, "the count of bytes starts again"


def test_a_read_taken_into_custody_and_stored_later_keeps_its_row_and_finishes_it(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    journal.receive("r", "f", "volume.info", body=b"{}", reply_to="q")
    journal.own("r", "me")
    journal.finish_later("r", "f", result("r", op="volume.info"))
    journal.close()
    entry = Journal(tmp_path / "journal.db").get("r")
    assert (entry.state, entry.owner, entry.body) == (State.finished, "me", None)


def test_deferred_writes_survive_a_failed_transaction_and_go_with_the_next(tmp_path):
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.finish_later("r", "f", result("r", op="volume.info"))
    journal.mark_published("r")
    with pytest.raises(sqlite3.OperationalError):
        journal._with_deferred("INSERT INTO no_such_table VALUES (1)")
    assert journal.get("r").published and Journal(path).get("r") is None
    journal.heartbeat("owner")
    assert Journal(path).get("r").published


def full_journal(tmp_path, monkeypatch) -> Journal:
    """A journal that has no room left (SQLite's page limit set to its size: SQLITE_FULL)."""
    monkeypatch.setattr("worker.state.journal.UNWRITABLE_RETRY_MIN", 0.02)
    journal = Journal(tmp_path / "journal.db")
    with journal._lock:
        pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
        journal._db.execute(f"PRAGMA max_page_count = {pages}")
    return journal


def make_room(journal: Journal) -> None:
    with journal._lock:
        journal._db.execute("PRAGMA max_page_count = 1000000")


def test_a_write_waits_while_the_journal_is_full_and_goes_through_once_it_has_room(tmp_path, monkeypatch):
    journal = full_journal(tmp_path, monkeypatch)
    written = threading.Event()
    writer = threading.Thread(target=lambda: (journal.receive("a", "f", "volume.create", body=b"x" * 20000),
                                              written.set()))
    writer.start()
    time.sleep(0.3)
    assert not written.is_set(), "waiting, not failing"
    assert "cannot be written" in journal.unwritable and "full" in journal.unwritable
    make_room(journal)
    assert written.wait(5)
    assert journal.unwritable is None and journal.known("a")


def test_stop_waiting_ends_a_wait_for_room_with_the_error(tmp_path, monkeypatch):
    journal = full_journal(tmp_path, monkeypatch)
    failures = []

    def write() -> None:
        try:
            journal.receive("a", "f", "volume.create", body=b"x" * 20000)
        except sqlite3.OperationalError as error:
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.2)
    journal.stop_waiting()
    writer.join(5)
    assert len(failures) == 1 and "full" in str(failures[0])
    assert not journal.known("a")


def test_a_checkpoint_that_cannot_be_written_is_skipped_not_raised(tmp_path, caplog):
    """A full disk made the checkpoint raise, which ended the custody pass before it took overdue
    commands into custody or looked for orphans (found by the soak's state-dir-full fault)."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    try:
        journal.receive("c1", "f", "volume.create")
        # A connection that cannot write the database fails the checkpoint as a full disk does.
        journal._checkpointer = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        assert journal.checkpoint() is False
        assert journal.checkpoint() is False
        assert [r.message for r in caplog.records].count(
            "cannot checkpoint the journal; its write-ahead log keeps the changes") == 1
        journal._checkpointer = None
        assert journal.checkpoint() is True
        assert journal.get("c1") is not None
    finally:
        journal.close()
