"""`storage-worker top` in a real terminal: tmux runs it against two real workers while a slow upload
runs, a pool fills and a command fails; the test reads the screen with `tmux capture-pane`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL, require, unique
from tests.integration.conftest import call_async, error_of, ok, remove_pools, wait_for
from tests.integration.test_alerts import small_filesystem  # noqa: F401 - a fixture
from tests.integration.test_transfers import Site

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("storage-worker"))
MiB = 2**20
PERCENT = re.compile(r"\s(\d+)%\s")


class Screen:
    """A command in a detached tmux session of its own tmux server (its own socket, no user config)."""

    def __init__(self, command: str, width: int = 160, height: int = 70):
        require(shutil.which("tmux") is not None, "tmux is not installed")
        self.socket = unique("top-")
        self._tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), command)
        self._socket_path = self._tmux("display-message", "-p", "#{socket_path}").stdout.strip()

    def _tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=30)

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "top").stdout

    def line(self, *words: str) -> str | None:
        """The first line of the screen holding every one of `words`."""
        return next((line for line in self.text().splitlines() if all(word in line for word in words)), None)

    def row(self, host: str, *words: str) -> str | None:
        """The first table row of `host` (its first column) holding every one of `words`."""
        return next((line for line in self.text().splitlines()
                     if line.split()[:1] == [host] and all(word in line for word in words)), None)

    def press(self, key: str) -> None:
        self._tmux("send-keys", "-t", "top", key)

    def alive(self) -> bool:
        return self._tmux("has-session", "-t", "top").returncode == 0

    def wait(self, predicate, timeout: float, what: str):
        """wait_for, showing the screen when it times out."""
        try:
            return wait_for(predicate, timeout, what, interval=0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}; the screen:\n{self.text()}") from None

    def close(self) -> None:
        """Ends the server and removes its socket, which tmux leaves behind."""
        self._tmux("kill-server")
        if self._socket_path:
            Path(self._socket_path).unlink(missing_ok=True)


def percent(row: str) -> int:
    match = PERCENT.search(row)
    assert match is not None, f"no percentage in {row!r}"
    return int(match.group(1))


def bars(row: str) -> int:
    return row.count("█")


def test_top_shows_hosts_pools_jobs_and_failures_live_and_q_quits(small_filesystem, make_worker, tmp_path):  # noqa: F811
    prefix = f"test-{unique('top')}"
    mount = small_filesystem(tmp_path / "small", 128)
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site", pause=0.01)  # 64 KiB every 10 ms: 64 MiB in about ten seconds
    one = make_worker(prefix=prefix, allowed_roots=[str(mount)], url_allowlist=[f"{site.base}/ok/"],
                      capacity_low=0.6)
    two = make_worker(prefix=prefix)
    client = one.client()
    pool = one.name("pool")
    status = tmp_path / "top-exit-status"
    screen = None
    try:
        ok(client.call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(mount / pool)},
                                       "build": True, "start": True}))
        other_pool = two.running_pool(two.client())

        # Started after the pools were made: they come from the stream's history. (The panes of a tmux
        # server started from here get COLUMNS=80 and LINES=24 in their environment, which rich would
        # take over the terminal's real size.)
        command = (f"env -u COLUMNS -u LINES LANG=C.UTF-8 {shlex.quote(CLI)} top --prefix {prefix} --amqp-url {shlex.quote(AMQP_URL)} "
                   f"--since 10m; echo $? > {shlex.quote(str(status))}")
        screen = Screen(command)
        # (Both workers share this machine's libvirtd, so each lists the other's pool too.)
        screen.wait(lambda: screen.row(one.host, "online") and screen.row(two.host, "online")
                    and screen.row(one.host, pool, "running") and screen.row(two.host, other_pool, "running"), 30,
                    "both hosts online and both pools, from history")
        pool_before = screen.row(one.host, pool)
        assert percent(pool_before) < 10 and "LOW" not in pool_before, pool_before

        # A long upload: its progress bar moves.
        (site.root / "slow.bin").write_bytes(os.urandom(64 * MiB))
        ok(client.call("volume.create", {"pool": pool, "name": "big.raw", "capacity": 64 * MiB}))
        command_id = f"upload-{uuid.uuid4().hex[:8]}"
        thread, results = call_async(one.client, "volume.upload",
                                     {"pool": pool, "name": "big.raw", "sparse": False,
                                      "source": {"url": f"{site.base}/ok/slow/slow.bin"}},
                                     timeout=180, command_id=command_id)
        rows: list[str] = []

        def progress_moved() -> bool:
            row = screen.row(one.host, command_id[:12])
            if row is not None and (not rows or percent(row) != percent(rows[-1])):
                rows.append(row)
            return len(rows) >= 3
        try:
            screen.wait(progress_moved, 60, "the upload's progress bar to move twice")
        finally:
            thread.join(timeout=180)
        print(screen.text())  # what an operator saw during the upload
        assert all("volume.upload" in row and "MiB/s" in row for row in rows), rows
        shares = [percent(row) for row in rows]
        assert shares == sorted(shares) and len(set(shares)) == len(shares) and shares[-1] < 100, shares
        assert bars(rows[0]) < bars(rows[-1]), rows
        assert ok(results[0])["bytes"] == 64 * MiB

        # Once its result is in the job is gone; the pool's bar grew and the pool is low on space.
        screen.wait(lambda: screen.line(command_id[:12]) is None and "LOW" in (screen.row(one.host, pool) or ""), 30,
                 "the job to end and the pool to be low")
        pool_after = screen.row(one.host, pool)
        assert percent(pool_after) >= percent(pool_before) + 40, (pool_before, pool_after)
        assert bars(pool_after) > bars(pool_before), (pool_before, pool_after)

        # A failure on the other host, with its error code.
        error_of(two.client().call("volume.info", {"pool": other_pool, "name": "absent.raw"}), "failed", "not_found")
        failure = screen.wait(lambda: screen.line(two.host, "volume.info", "not_found"), 15, "the failure")
        assert "absent.raw" in failure

        screen.press("q")
        screen.wait(lambda: not screen.alive(), 10, "top to quit on q")
        assert status.read_text().strip() == "0"
    finally:
        if screen is not None:
            screen.close()
        site.close()
        remove_pools(one.name_prefix)  # before the file system under the pool goes
