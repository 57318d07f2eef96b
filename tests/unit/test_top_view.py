"""worker.ops.top.view and keys: the picture drawn from a fleet, and key presses from a terminal."""

from __future__ import annotations

import os
import pty
import termios
import pytest
from rich.console import Console

from messages.events import EventType
from messages.stream import Gap
from tests.unit.test_top_state import GiB, at, event, pool, progress, result, worker
from worker.ops.top.keys import Keys
from worker.ops.top.state import Fleet
from worker.ops.top.view import EMPTY, FULL, ago, bar, duration, render, size


def text_of(fleet: Fleet, seconds: float, width: int = 160) -> str:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(render(fleet, at(seconds), "p.events.stream since 10:00"))
    return console.export_text()


def row(text: str, *words: str) -> str:
    return next(line for line in text.splitlines() if all(word in line for word in words))


def test_bars_sizes_and_times():
    assert str(bar(0.5, "cyan", width=10)) == FULL * 5 + EMPTY * 5
    assert str(bar(1.7, "cyan", width=4)) == FULL * 4 and str(bar(-1, "cyan", width=4)) == EMPTY * 4
    assert (size(512), size(1536), size(3 * GiB)) == ("512 B", "1.5 KiB", "3.0 GiB")
    assert (ago(5), ago(125), ago(7300), ago(200000)) == ("5s ago", "2m ago", "2h01m ago", "2d ago")
    assert (duration(None), duration(65), duration(3725)) == ("-", "1:05", "1:02:05")


def test_the_picture_of_a_fleet():
    fleet = Fleet()
    fleet.apply_event(worker(EventType.worker_online, "kvm-01", when=0))
    fleet.apply_event(worker(EventType.worker_online, "kvm-02", when=0))
    fleet.apply_event(worker(EventType.worker_offline, "kvm-02", when=50, reason="stopped"))
    fleet.apply_event(event(*pool("images", allocation=25 * GiB), when=1))
    fleet.apply_event(event(*pool("full", allocation=95 * GiB, kind=EventType.pool_capacity_low, threshold=0.1),
                            when=2))
    fleet.apply_event(progress("upload-1234567890", 256 * 2**20, 1024 * 2**20, 64 * 2**20, when=59))
    fleet.apply_result(result("c9", "failed", host="kvm-02", when=40, code="not_found"))
    fleet.apply_gap(Gap("/storage-worker/kvm-01", "kvm-01", 7, 9))
    text = text_of(fleet, 60)

    assert "p.events.stream since 10:00" in text and "6 events, 1 results" in text
    assert "1 gap(s), last: kvm-01: 3 event(s) missing (#7-#9)" in text
    assert "online" in row(text, "kvm-01", "ago") and "(1s ago)" in row(text, "kvm-01", "ago")
    offline = row(text, "kvm-02", "ago")
    assert "offline" in offline and "stopped" in offline and "10s ago" in offline
    images = row(text, "kvm-01", "images")
    assert "running" in images and "25%" in images and images.count(FULL) == 6 and "LOW" not in images
    assert "75.0 GiB" in images and "100.0 GiB" in images
    full = row(text, "kvm-01", "full")
    assert "LOW" in full and "95%" in full and full.count(FULL) == 23
    job = row(text, "upload-12345", "volume.upload")  # the command id, shortened to 12
    assert job.count(FULL) == 6 and "25%" in job and "256.0 MiB / 1.0 GiB" in job and "64.0 MiB/s" in job
    assert "0:12" in job, "768 MiB left at 64 MiB/s"
    failure = row(text, "kvm-02", "not_found")
    assert "failed" in failure and "it went wrong: not_found" in failure

    # Half a minute later the job has gone quiet: no longer shown as running.
    assert "upload-12345" not in text_of(fleet, 60 + 31)


def test_many_pools_show_the_low_and_the_latest_changed():
    fleet = Fleet()
    for n in range(20):
        fleet.apply_event(event(*pool(f"p{n:02d}"), when=n))
    fleet.apply_event(event(*pool("p00", allocation=99 * GiB, kind=EventType.pool_capacity_low, threshold=0.1),
                            when=0))
    text = text_of(fleet, 30)
    shown = {f"p{n:02d}" for n in range(20) if f" p{n:02d} " in text}
    assert shown == {"p00"} | {f"p{n:02d}" for n in range(6, 20)}, shown
    assert "5 more pool(s) not shown" in text


@pytest.fixture
def terminal():
    main, secondary = pty.openpty()
    stream = os.fdopen(secondary, "r")
    yield main, stream
    stream.close()
    os.close(main)


def test_keys_come_one_by_one_without_echo_and_the_terminal_is_restored(terminal):
    main, stream = terminal
    before = termios.tcgetattr(stream.fileno())
    with Keys(stream) as keys:
        assert keys.pressed() == ""
        mode = termios.tcgetattr(stream.fileno())
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
        os.write(main, b"xq")  # no newline: cbreak hands each key over at once
        assert keys.pressed() == "xq" and keys.pressed() == ""
    assert termios.tcgetattr(stream.fileno()) == before


def test_keys_off_a_terminal_are_none(tmp_path):
    with open(tmp_path / "file", "w+") as stream, Keys(stream) as keys:
        assert keys.pressed() == ""


def test_the_pools_get_the_lines_the_rest_leaves():
    fleet = Fleet()
    fleet.apply_event(worker(EventType.worker_online, "kvm-01", when=0))
    for n in range(40):
        fleet.apply_event(event(*pool(f"p{n:02d}"), when=n))
    console = Console(width=120, height=30, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(render(fleet, at(50), "p", height=30))
    lines = console.export_text().rstrip("\n").splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    assert sum(1 for line in lines if " p" in line and "running" in line) == 30 - 15, "\n".join(lines)
    assert len(lines) == 30 and any("25 more pool(s) not shown" in line for line in lines)
