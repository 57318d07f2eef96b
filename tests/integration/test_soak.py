"""The chaos soak in CI: three minutes with a fixed seed (`scripts/soak --minutes 3 --seed 1`), every
invariant holding. It runs the soak's own cluster (started and stopped here unless it ran before),
restarts and freezes the machine's libvirtd for moments, and leaves nothing behind: no pool, mount,
loop device or worker process of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from tests.conftest import require
from tests.soak.faults import libvirtd_answers
from tests.soak.rig import cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(480)
def test_a_three_minute_soak_ends_without_violations(libvirt_conn):
    require(os.geteuid() == 0, "the soak needs root (network namespaces, mounts, loop devices)")
    cluster_ran = bool(cluster("pids").strip())
    began = time.monotonic()
    soak = subprocess.Popen([sys.executable, "-m", "tests.soak", "--minutes", "3", "--seed", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = soak.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        soak.terminate()  # SIGTERM: the soak continues libvirtd and removes what it made
        stdout, stderr = soak.communicate(timeout=60)
    done = subprocess.CompletedProcess(soak.args, soak.returncode, stdout, stderr)
    took = time.monotonic() - began
    print(done.stdout)
    print(f"soak took {took:.0f} s")
    assert done.returncode == 0, f"soak exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "VIOLATIONS" in done.stdout and done.stdout.split("VIOLATIONS")[1].split()[0] == "0"
    assert libvirtd_answers(), "the soak left libvirtd stopped"
    prefix = re.search(r"prefix=(\S+)", done.stdout).group(1)
    conn = libvirt.open("qemu:///system")
    try:
        left = [p.name() for p in conn.listAllStoragePools(0) if p.name().startswith(prefix)]
    finally:
        conn.close()
    assert not left, f"the soak left pools behind: {left}"
    mounts = Path("/proc/mounts").read_text()
    tag = prefix.removeprefix("soak-")
    assert f"storage-worker-soak-{tag}" not in mounts, "the soak left a mount behind"
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    assert f"storage-worker-soak-{tag}" not in loops, "the soak left a loop device behind"
    assert bool(cluster("pids").strip()) == cluster_ran, "the soak's cluster is not as it was found"
