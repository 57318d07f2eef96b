"""Progress events are rate-limited to about one a second; the CLI draws them as a bar."""

from __future__ import annotations

import io

from messages.events import JobProgressData
from tests.unit.conftest import FakeClock
from worker.ops.cli import ProgressBar
from worker.handlers.progress import ProgressReporter


class Recorder:
    def __init__(self):
        self.events = []

    def emit(self, kind, data, **kwargs):
        self.events.append((kind, data, kwargs))


def test_at_most_one_event_per_interval_and_the_final_one_always():
    events, clock = Recorder(), FakeClock(100.0)
    reporter = ProgressReporter(events, "cmd-1", "volume.upload", clock=clock)
    for step in range(1, 9):  # 8 updates over 2 seconds
        clock.now += 0.25
        reporter.update(step * 25, 200)
    reporter.update(200, 200, final=True)
    done = [data.bytes_done for _, data, _ in events.events]
    assert done == [100, 200, 200]
    _, last, kwargs = events.events[-1]
    assert last.id == "cmd-1" and last.op == "volume.upload" and kwargs["command_id"] == "cmd-1"


def test_rate_is_bytes_per_second_over_the_last_interval():
    events, clock = Recorder(), FakeClock(100.0)
    reporter = ProgressReporter(events, "c", "volume.clone", clock=clock)
    clock.now += 2.0
    reporter.update(4000, 10_000)
    assert events.events[0][1].rate == 2000.0


def test_progress_bar_draws_share_and_sizes_on_one_line():
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar.show(JobProgressData(id="x", op="volume.upload", bytes_done=512 * 2**20, bytes_total=1024 * 2**20,
                             rate=100 * 2**20))
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[###############...............]") and " 50.0% " in text
    assert "512/1,024 MiB" in text and "100.0 MiB/s" in text and text.endswith("\n")
