"""Pool events are attributed to the command that caused them, even when libvirt's callback comes
after that command ended and another began on the same pool."""

from __future__ import annotations

from messages.events import EventType
from messages.operations import POOL_DEFINE, POOL_REFRESH, POOL_STOP, VOLUME_INFO, VOLUME_UPLOAD
from tests.unit.conftest import FakeClock
from worker.watch.attribution import Attribution


def test_a_late_event_goes_to_the_command_that_can_cause_it_not_the_newest():
    clock = FakeClock()
    attribution = Attribution(clock=clock)
    attribution.begin("images", "define-1", POOL_DEFINE.causes)
    attribution.end("images", "define-1")
    attribution.begin("images", "refresh-1", POOL_REFRESH.causes)
    assert attribution.command_for("images", EventType.pool_started) == "define-1"
    assert attribution.command_for("images", EventType.pool_refreshed) == "refresh-1"


def test_a_running_command_is_the_cause_and_an_ended_one_only_for_a_while():
    clock = FakeClock()
    attribution = Attribution(clock=clock, linger=5)
    attribution.begin("images", "stop-1", POOL_STOP.causes)
    clock.now = 100
    assert attribution.command_for("images", EventType.pool_stopped) == "stop-1"
    attribution.end("images", "stop-1")
    clock.now = 104
    assert attribution.command_for("images", EventType.pool_stopped) == "stop-1"
    clock.now = 106
    assert attribution.command_for("images", EventType.pool_stopped) is None


def test_events_no_command_of_this_worker_caused_have_none():
    attribution = Attribution(clock=FakeClock())
    assert attribution.command_for("images", EventType.pool_started) is None
    attribution.begin("images", "refresh-1", POOL_REFRESH.causes)
    assert attribution.command_for("images", EventType.pool_stopped) is None
    assert attribution.command_for("other", EventType.pool_refreshed) is None


def test_the_refresh_libvirt_makes_after_an_upload_belongs_to_the_upload():
    attribution = Attribution(clock=FakeClock())
    attribution.begin("images", "upload-1", VOLUME_UPLOAD.causes)
    attribution.begin("images", "info-1", VOLUME_INFO.causes)
    assert attribution.command_for("images", EventType.pool_refreshed) == "upload-1"
    assert attribution.command_for("images", EventType.pool_started) is None
