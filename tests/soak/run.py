"""`scripts/soak [--minutes N] [--seed S]`: a chaos soak of real workers on the soak's own RabbitMQ
cluster and the machine's libvirtd, then the invariant checker and one table. Exit status 0 when
there is no violation, 1 when there is one, 2 when the soak could not be set up.

The seed fixes the fault schedule (kinds, moments, targets) and each lane's random choices; the
commands a lane sends also follow the results it got, which the faults bend.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from messages.client import StorageClient
from tests.soak import checker
from tests.soak.bus import Bus
from tests.soak.driver import Driver
from tests.soak.faults import Faults, ensure_libvirtd, schedule
from tests.soak.lanes import BadInputLane, Context, DiskLane, Lane, PoolLane, VolumeLane
from tests.soak.model import Model
from tests.soak.report import table
from tests.soak.rig import Rig, RigError, cluster

KiB = 1024
DRAIN_SECONDS = 180


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the mix runs (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the mix (default 1)")
    parser.add_argument("--keep", action="store_true", help="leave the rig (workers, pools, files) for a look")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be more than 0, got {args.minutes}")
    return args


def define_pools(rig: Rig) -> None:
    """Each host's main dir pool, and the first host's pool on the small ext4."""
    for index, host in enumerate(rig.hosts):
        host.main_pool = f"{rig.prefix}-{host.host_id[-1]}-main"
        pools = [(host.main_pool, host.root / "main")]
        if index == 0:
            host.full_pool = f"{rig.prefix}-{host.host_id[-1]}-full"
            pools.append((host.full_pool, rig.pool_mount))
        with StorageClient(rig.urls, host_id=host.host_id, prefix=rig.prefix) as client:
            for name, path in pools:
                result = client.call("pool.define", {"name": name, "type": "dir", "target": {"path": str(path)},
                                                     "build": True, "start": True}, timeout=120)
                if result.status.value != "succeeded":
                    raise RigError(f"pool.define {name} at {path}: {result.status.value} {result.error}")


def upload_sources(rig: Rig, seed: int) -> dict[str, list[Path]]:
    rng = random.Random(f"sources-{seed}")
    sources = {}
    for host in rig.hosts:
        sources[host.host_id] = []
        for size in (256 * KiB, 1024 * KiB):
            path = host.transfer_dir / f"source-{size // KiB}k.img"
            path.write_bytes(rng.randbytes(size))
            sources[host.host_id].append(path)
    return sources


def make_lanes(rig: Rig, seed: int, sources: dict[str, list[Path]], context: Context) -> list[Lane]:
    lanes: list[Lane] = []

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}-{name}")
    for index, host in enumerate(rig.hosts):
        letter = host.host_id[-1]
        name = f"{rig.prefix}-{letter}"
        for number in range(2):
            lane = f"{name}-vol{number}"
            lanes.append(VolumeLane(lane, host.host_id, rng(lane), context, host.main_pool, host.transfer_dir,
                                    sources[host.host_id]))
        lanes.append(PoolLane(f"{name}-pools", host.host_id, rng(f"{name}-pools"), context, host.root))
        lanes.append(BadInputLane(f"{name}-bad", host.host_id, rng(f"{name}-bad"), context, host.main_pool))
        if index == 0:
            lanes.append(VolumeLane(f"{name}-full", host.host_id, rng(f"{name}-full"), context, host.full_pool,
                                    host.transfer_dir, [], volumes=4, sizes=(8, 12, 16), fully_allocated=True))
            lanes.append(DiskLane(f"{name}-disk", host.host_id, rng(f"{name}-disk"), context, host.main_pool,
                                  host.domain))
    return lanes


def restore(rig: Rig) -> None:
    """After the faults: libvirtd answering, all three nodes up, every worker process running."""
    ensure_libvirtd()
    cluster("start")
    for worker in rig.workers():
        if not worker.running():
            worker.start()
            worker.wait_online(timeout=120)


def soak(args: argparse.Namespace) -> int:
    began = time.monotonic()
    seconds = args.minutes * 60
    plan = schedule(args.seed, seconds)
    try:
        rig = Rig.create()
    except (RigError, OSError) as exc:
        print(f"soak: could not set up: {exc}", file=sys.stderr)
        return 2
    faults = None
    try:
        rig.start_workers()
        define_pools(rig)
        sources = upload_sources(rig, args.seed)
        model, surprises = Model(), []
        context = Context(model=model, surprises=surprises)
        bus = Bus(rig.urls, rig.prefix)
        driver = Driver(bus, make_lanes(rig, args.seed, sources, context))
        faults = Faults(rig, plan)
        faults.start()
        driver.run(seconds)
        faults.stop()
        restore(rig)
        driver.drain(DRAIN_SECONDS)
        rig.stop_workers()
        findings = judge(rig, driver, model, surprises, faults.counts()["broker.node_restart"])
        header = (f"soak seed={args.seed} minutes={args.minutes:g} prefix={rig.prefix} "
                  f"hosts={','.join(h.host_id for h in rig.hosts)} (first with a standby) "
                  f"ran {time.monotonic() - began:.0f} s")
        errors = [f"{f.kind} at {f.started:.0f} s: {f.error}" for f in faults.errors()]
        for fault in faults.injected:  # the timeline, for reading the workers' logs against
            print(f"fault {fault.kind} {fault.target} {fault.started:.1f}-{fault.ended:.1f} s", file=sys.stderr)
        print(table(findings, faults.counts(), errors, driver.resends, header), flush=True)
        if findings.violations:
            kept = Path(f"/tmp/storage-worker-soak-logs-{rig.tag}")
            kept.mkdir()
            for worker in rig.workers():
                shutil.copy(worker.log_path, kept)
            print(f"worker logs: {kept}", flush=True)
        bus.close()
        return 1 if findings.violations else 0
    finally:
        if faults is not None:
            faults.stop()
        ensure_libvirtd()
        if args.keep:
            print(f"soak: kept {rig.base}", file=sys.stderr)
        else:
            rig.close()


def judge(rig: Rig, driver: Driver, model: Model, surprises: list[str], node_restarts: int) -> checker.Findings:
    findings = checker.Findings()
    findings.add("results", checker.check_results(driver, findings))
    findings.add("reads", surprises)
    findings.add("libvirt", checker.check_libvirt(model, rig.prefix, findings))
    findings.add("files", checker.check_pool_files(rig.prefix))
    state_dirs = [host.state_dir for host in rig.hosts]
    answered = {command_id for command_id, results in driver.bus.inbox.results.items() if results}
    findings.add("journal", checker.check_journals(state_dirs, answered))
    events = driver.bus.read_stream(f"{rig.prefix}.events.stream")
    drops = checker.reported_drops([worker.log_path for worker in rig.workers()])
    driver.bus.collect()
    findings.add("events", checker.check_events(events, driver.bus.inbox.events, [h.host_id for h in rig.hosts],
                                                drops, checker.parked_events(state_dirs), node_restarts, findings))
    dead = driver.bus.read_queue(f"{rig.prefix}.dead")
    findings.add("dead letters", checker.check_dead_letters(dead, driver, findings))
    return findings


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM ends the soak like Ctrl-C: through its clean-up (libvirtd continued, the rig removed)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return soak(parse(sys.argv[1:] if argv is None else argv))
