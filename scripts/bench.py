"""Benchmarks of the worker, each beside a baseline measured in the same run (see scripts/bench).

    scripts/bench [--only commands,transfers,events,scale,clones,fleet] [--fleet 10,50] [--markdown FILE]

Areas:
- commands: volume.info and create+delete through the whole path (client -> broker -> worker ->
  libvirt -> confirmed result -> client), serial latency and pipelined throughput, against libvirt
  called directly and a bare pika request/reply; worker memory over 10 000 commands.
- transfers: upload/download against virsh vol-upload/vol-download, sparse and not; peak memory
  during a 4 GiB upload; volume.info latency on another volume while an upload runs.
- events: libvirt pool callback -> broker confirm of the event, idle and with 500 commands in flight.
- scale: pools of 100, 1 000 and 10 000 volumes: volume.list latency, re-listing time, memory.
- clones: a 1 GiB volume cloned by reflink and by the worker's copy against libvirt's own clone of
  it, on loop-mounted xfs (reflink=1) and ext4 (scripts/benchmarks/clones.py).
- fleet (only when asked for): N workers with distinct host ids on the three-node dev cluster —
  memory, connections, aggregate volume.info, events, resume after a node kill
  (scripts/benchmarks/fleet.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from benchmarks.clones import bench_clones  # noqa: E402
from benchmarks.common import (GiB, IMAGES, MiB, BenchPool, CpuMeter, Requester, Row, Table,  # noqa: E402
                               WorkerProcess, best_of, call_timed, command, histogram_buckets, histogram_quantile,
                               ms, percentile, settle, timed)
from benchmarks.fleet import bench_fleet  # noqa: E402
from benchmarks.floors import BarePika, libvirt_create_delete, libvirt_volume_info, p50_p99  # noqa: E402


def bench_commands(table: Table, worker: WorkerProcess, pool: BenchPool) -> None:
    floor_info = libvirt_volume_info(pool, "info.raw", 2000)
    floor_cd = libvirt_create_delete(pool, 200)
    bare = BarePika(prefetch=16)
    try:
        bare.serial(200)  # warm-up
        bare_serial = bare.serial(2000)
        bare_rate = bare.pipelined(5000, 64)
    finally:
        bare.close()
    reader = BarePika(prefetch=16, volume=(pool.name, "info.raw"))
    try:
        reader.serial(200)
        reader_rate = reader.pipelined(5000, 64)
    finally:
        reader.close()

    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    try:
        info = lambda: command("volume.info", {"pool": pool.name, "name": "info.raw"})  # noqa: E731
        client.serial([info() for _ in range(200)])  # warm-up
        serial = client.serial([info() for _ in range(2000)])
        meter = CpuMeter(worker.process.pid)
        meter.start()
        rate = client.pipelined([info() for _ in range(5000)], 64)
        cpu = meter.per(5000)
        client.expect_succeeded("volume.info")

        def create_delete(count: int, in_flight: int | None) -> tuple[list[float], float]:
            names = [f"cd-{uuid.uuid4().hex[:8]}.raw" for _ in range(count)]
            creates = [command("volume.create", {"pool": pool.name, "name": n, "capacity": MiB}) for n in names]
            deletes = [command("volume.delete", {"pool": pool.name, "name": n}) for n in names]
            if in_flight is None:
                pairs = []
                for c, d in zip(creates, deletes):
                    pairs.append(sum(client.serial([c, d])))
                return pairs, 0.0
            began = time.perf_counter()
            client.pipelined(creates, in_flight)
            client.pipelined(deletes, in_flight)
            return [], count / (time.perf_counter() - began)

        cd_serial, _ = create_delete(200, None)
        _, cd_rate = create_delete(1000, 64)
        client.expect_succeeded("volume.create/delete")
    finally:
        client.close()
    in_process_rate = in_process_volume_info_rate(pool.path.parent / "state-in-process")

    f50, f99 = p50_p99(floor_info)
    b50, b99 = p50_p99(bare_serial)
    w50, w99 = p50_p99(serial)
    table.add(Row("commands", "volume.info serial p50 (floor: bare pika p50 + libvirt p50)", ms(w50),
                  ms(b50 + f50), w50 / (b50 + f50), "<= floor + 1 ms", w50 <= b50 + f50 + 0.001))
    table.add(Row("commands", "volume.info serial p99", ms(w99), ms(b99 + f99), w99 / (b99 + f99), "", None))
    table.add(Row("commands", "volume.info pipelined, 64 in flight (msg/s)", f"{rate:,.0f}/s", f"{bare_rate:,.0f}/s",
                  rate / bare_rate, ">= 0.8x bare", rate >= 0.8 * bare_rate))
    table.add(Row("commands", "same, against bare pika + the libvirt read (one thread, nothing else)", f"{rate:,.0f}/s",
                  f"{reader_rate:,.0f}/s", rate / reader_rate, "", None))
    table.add(Row("commands", "same, worker on libvirt's in-process test driver (no libvirtd round trip)",
                  f"{in_process_rate:,.0f}/s", f"{bare_rate:,.0f}/s", in_process_rate / bare_rate, "", None))
    table.add(Row("commands", "CPU per pipelined volume.info: worker / broker / libvirtd / client",
                  " / ".join(f"{cpu.get(name, 0) * 1e3:.2f}" for name in ("worker", "broker", "libvirtd", "client"))
                  + " ms", "", None, "", None))
    c50, c99 = p50_p99(cd_serial)
    l50, _ = p50_p99(floor_cd)
    table.add(Row("commands", "create+delete 1 MiB raw serial p50 (floor: libvirt + 2x bare)", ms(c50),
                  ms(l50 + 2 * b50), c50 / (l50 + 2 * b50), "", None))
    table.add(Row("commands", "create+delete serial p99", ms(c99), "", None, "", None))
    table.add(Row("commands", "create+delete pipelined, 64 in flight (pairs/s)", f"{cd_rate:,.0f}/s",
                  f"{1 / (l50 + 2 * b50):,.0f}/s serial", None, "", None))


def in_process_volume_info_rate(state: Path) -> float:
    """Pipelined volume.info through a worker whose libvirt is the in-process test driver
    (test:///default): the same path minus the round trip to libvirtd and libvirtd's own work,
    to tell the worker's cost from libvirt's."""
    worker = WorkerProcess(f"{uuid.uuid4().hex[:6]}-test-driver", Path("/default-pool"), state,
                           libvirt_uri="test:///default")
    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    try:
        info = lambda: command("volume.info", {"pool": "default-pool", "name": "info.raw"})  # noqa: E731
        client.serial([command("volume.create", {"pool": "default-pool", "name": "info.raw", "capacity": MiB})])
        client.serial([info() for _ in range(200)])  # warm-up
        rate = client.pipelined([info() for _ in range(5000)], 64)
        client.expect_succeeded("volume.info on the test driver")
        return rate
    finally:
        client.close()
        worker.stop()


def bench_memory(table: Table, worker: WorkerProcess, pool: BenchPool) -> None:
    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    try:
        info = lambda: command("volume.info", {"pool": pool.name, "name": "info.raw"})  # noqa: E731
        client.pipelined([info() for _ in range(2000)], 64)
        early = worker.rss()
        client.pipelined([info() for _ in range(8000)], 64)
        late = worker.rss()
        client.pipelined([info() for _ in range(5000)], 64)
        later = worker.rss()
        client.expect_succeeded("volume.info")
    finally:
        client.close()
    table.add(Row("commands", "worker RSS after 10 000 commands", f"{late / MiB:.0f} MiB", "", None, "< 100 MiB",
                  late < 100 * MiB))
    growth = (later - late) / MiB
    table.add(Row("commands", "RSS growth over the next 5 000 commands", f"{growth:+.1f} MiB",
                  f"{(late - early) / MiB:+.1f} MiB over 8 000", None, "not growing", growth < 2))


def bench_transfers(table: Table, worker: WorkerProcess, pool: BenchPool, scratch: Path) -> None:
    dense = scratch / "dense.bin"
    with open(dense, "wb") as handle:
        block = os.urandom(8 * MiB)
        for _ in range(GiB // len(block)):
            handle.write(block)
    sparse = scratch / "sparse.bin"
    with open(sparse, "wb") as handle:
        handle.truncate(4 * GiB)
        for index in range(64):
            handle.seek(index * (4 * GiB // 64))
            handle.write(os.urandom(MiB))
    for name, size in (("dense-virsh.raw", GiB), ("dense-worker.raw", GiB), ("sparse-virsh.raw", 4 * GiB),
                       ("sparse-worker.raw", 4 * GiB), ("sparse-full.raw", 4 * GiB), ("other.raw", MiB)):
        pool.volume(name, size)
    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    try:
        worker_up, virsh_up = best_of(
            2, lambda: call_timed(client, "volume.upload", {"pool": pool.name, "name": "dense-worker.raw",
                                                            "source": {"path": str(dense)}, "sparse": False}),
            lambda: timed(["virsh", "-q", "vol-upload", "--pool", pool.name, "dense-virsh.raw", str(dense)]))
        table.add(Row("transfers", "1 GiB upload, not sparse (speed vs virsh vol-upload)", f"{worker_up:.2f} s",
                      f"{virsh_up:.2f} s", virsh_up / worker_up, ">= 0.9x", virsh_up / worker_up >= 0.9,
                      "best of 2, caches dropped"))
        out_virsh, out_worker = scratch / "down-virsh.bin", scratch / "down-worker.bin"

        def virsh_download(durable: bool) -> float:
            out_virsh.unlink(missing_ok=True)
            began = time.perf_counter()
            subprocess.run(["virsh", "-q", "vol-download", "--pool", pool.name, "dense-virsh.raw", str(out_virsh)],
                           check=True, capture_output=True)
            if durable:
                fd = os.open(out_virsh, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            return time.perf_counter() - began

        def worker_download() -> float:
            return call_timed(client, "volume.download", {"pool": pool.name, "name": "dense-worker.raw",
                                                          "destination": {"path": str(out_worker)}, "sparse": False})

        worker_down, virsh_down = best_of(2, worker_download, lambda: virsh_download(False))
        table.add(Row("transfers", "1 GiB download (speed vs virsh vol-download)", f"{worker_down:.2f} s",
                      f"{virsh_down:.2f} s", virsh_down / worker_down, ">= 0.9x", virsh_down / worker_down >= 0.9,
                      "the worker fsyncs before its rename"))
        _, virsh_durable = best_of(1, worker_download, lambda: virsh_download(True))
        table.add(Row("transfers", "1 GiB download vs virsh vol-download + fsync", f"{worker_down:.2f} s",
                      f"{virsh_durable:.2f} s", virsh_durable / worker_down, "", None,
                      "same durability on both sides"))

        worker_sparse, virsh_sparse = best_of(
            2, lambda: call_timed(client, "volume.upload", {"pool": pool.name, "name": "sparse-worker.raw",
                                                            "source": {"path": str(sparse)}}),
            lambda: timed(["virsh", "-q", "vol-upload", "--sparse", "--pool", pool.name, "sparse-virsh.raw",
                           str(sparse)]))
        peak = [0]
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], worker.rss())

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        settle()
        worker_full = call_timed(client, "volume.upload", {"pool": pool.name, "name": "sparse-full.raw",
                                                           "source": {"path": str(sparse)}, "sparse": False})
        stop.set()
        sampler.join()
        table.add(Row("transfers", "4 GiB file, 64 MiB data: sparse upload vs virsh --sparse", f"{worker_sparse:.2f} s",
                      f"{virsh_sparse:.2f} s", worker_sparse / virsh_sparse, "<= 2x",
                      worker_sparse / virsh_sparse <= 2))
        table.add(Row("transfers", "same file: sparse vs non-sparse upload (speed-up)", f"{worker_sparse:.2f} s",
                      f"{worker_full:.2f} s", worker_full / worker_sparse, ">= 20x", worker_full / worker_sparse >= 20))
        table.add(Row("transfers", "worker peak RSS during a 4 GiB upload", f"{peak[0] / MiB:.0f} MiB", "", None,
                      "< 150 MiB", peak[0] < 150 * MiB))

        info = lambda: command("volume.info", {"pool": pool.name, "name": "other.raw"})  # noqa: E731
        settle()
        idle = client.serial([info() for _ in range(300)])

        def during(start, running) -> list[float]:
            """volume.info latencies while a transfer started by `start()` runs (`running()`)."""
            settle()
            handle = start()
            time.sleep(0.3)
            seen: list[float] = []
            while running(handle):
                seen += client.serial([info() for _ in range(20)])
            return seen

        def worker_upload():
            uploader = Requester(f"{worker.prefix}.commands", worker.host_id)
            upload_id, body = command("volume.upload", {"pool": pool.name, "name": "dense-worker.raw",
                                                         "source": {"path": str(dense)}, "sparse": False})
            uploader.send(body, upload_id)
            return uploader, upload_id

        def worker_running(handle) -> bool:
            uploader, upload_id = handle
            uploader.connection.process_data_events(time_limit=0)
            if upload_id in uploader.sent_at:
                return True
            uploader.close()
            return False

        busy = during(worker_upload, worker_running)
        beside = during(lambda: subprocess.Popen(["virsh", "-q", "vol-upload", "--pool", pool.name, "dense-virsh.raw",
                                                  str(dense)]), lambda process: process.poll() is None)
        client.expect_succeeded("transfer and volume.info")
        i50, b50, v50 = percentile(idle, 0.5), percentile(busy, 0.5), percentile(beside, 0.5)
        table.add(Row("transfers", "volume.info p50 on another volume during a 1 GiB upload", ms(b50),
                      f"{ms(i50)} idle", b50 / i50, "<= 2x", b50 / i50 <= 2, f"{len(busy)} calls"))
        table.add(Row("transfers", "same, while virsh vol-upload loads the disk instead", ms(v50),
                      f"{ms(i50)} idle", v50 / i50, "", None, "the disk's share of the slow-down"))
    finally:
        client.close()


def bench_events(table: Table, worker: WorkerProcess, pool: BenchPool) -> None:
    name = "bench_event_latency"

    def refreshes(count: int) -> None:
        for _ in range(count):
            pool.handle.refresh(0)
            time.sleep(0.005)

    before = histogram_buckets(worker.metrics(), "storage_worker_event_latency_seconds")
    refreshes(300)
    time.sleep(0.5)
    text = worker.metrics()
    idle50 = histogram_quantile(text, "storage_worker_event_latency_seconds", 0.5, before)
    idle99 = histogram_quantile(text, "storage_worker_event_latency_seconds", 0.99, before)

    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    before = histogram_buckets(worker.metrics(), "storage_worker_event_latency_seconds")
    loader = threading.Thread(target=refreshes, args=(300,))
    info = [command("volume.info", {"pool": pool.name, "name": "info.raw"}) for _ in range(6000)]
    loader.start()
    client.pipelined(info, 500)
    loader.join()
    client.expect_succeeded("volume.info")
    client.close()
    time.sleep(0.5)
    text = worker.metrics()
    busy50 = histogram_quantile(text, "storage_worker_event_latency_seconds", 0.5, before)
    busy99 = histogram_quantile(text, "storage_worker_event_latency_seconds", 0.99, before)
    table.add(Row("events", "pool callback -> event confirmed, idle p50", ms(idle50), "", None, "", None, name))
    table.add(Row("events", "pool callback -> event confirmed, idle p99", ms(idle99), "", None, "< 5 ms",
                  idle99 < 0.005))
    table.add(Row("events", "same, 500 commands in flight p50", ms(busy50), "", None, "", None))
    table.add(Row("events", "same, 500 commands in flight p99", ms(busy99), "", None, "< 50 ms", busy99 < 0.05))


def bench_scale(table: Table, worker: WorkerProcess, root: Path) -> None:
    client = Requester(f"{worker.prefix}.commands", worker.host_id)
    timings = {}
    try:
        for count in (100, 1000, 10_000):
            rss_before = worker.rss()
            pool = BenchPool(f"{worker.host_id}-scale{count}", root)
            for index in range(count):
                with open(pool.path / f"s{index:05d}.raw", "wb") as handle:
                    handle.truncate(MiB)
            pool.handle.refresh(0)  # the worker learns the pool's volumes from the refresh event
            # ... and publishes a volume.created event for each it had not seen yet: timed while those
            # go out, the listing would measure the event burst (seconds at 10 000), not itself.
            _wait_for_events_to_settle(worker)
            listing = [client.serial([command("volume.list", {"pool": pool.name})])[0] for _ in range(3)]
            client.expect_succeeded("volume.list")
            # A delete first looks for volumes built on the one it deletes: every volume's XML is read.
            deletes = []
            for index in range(3):
                client.serial([command("volume.create", {"pool": pool.name, "name": f"d{index}.raw", "capacity": MiB})])
                deletes += client.serial([command("volume.delete", {"pool": pool.name, "name": f"d{index}.raw"})])
            client.expect_succeeded("volume.create/delete")
            reconcile = _reconcile_seconds(worker)
            timings[count] = (min(listing), reconcile, worker.rss() - rss_before, min(deletes))
            pool.remove()
    finally:
        client.close()
    for count, (listing, reconcile, rss, delete) in timings.items():
        per = listing / count * 1e6
        table.add(Row("scale", f"volume.list of {count:,} volumes", f"{listing * 1000:.0f} ms", f"{per:.0f} us/volume",
                      None, "linear", None))
        table.add(Row("scale", f"re-listing pass with {count:,} volumes in the pool", f"{reconcile * 1000:.1f} ms", "",
                      None, "< 1 s at 10 000", reconcile < 1 if count == 10_000 else None))
        table.add(Row("scale", f"worker RSS growth holding and listing {count:,} volumes", f"{rss / MiB:+.1f} MiB",
                      f"{rss / count:.0f} B/volume", None, "linear", None))
        table.add(Row("scale", f"volume.delete with {count:,} volumes in the pool (in-use look)",
                      f"{delete * 1000:.0f} ms", f"{delete / count * 1e6:.0f} us/volume", None, "", None))
    small, large = timings[1000][0], timings[10_000][0]
    table.add(Row("scale", "volume.list 10 000 / 1 000 (10 = linear)", f"{large / small:.1f}", "", None, "~10",
                  large / small < 15))


def _wait_for_events_to_settle(worker: WorkerProcess, quiet: float = 1.0, timeout: float = 120) -> None:
    """Until the worker has published no event for `quiet` seconds."""
    def published() -> float:
        return sum(float(line.split()[-1]) for line in worker.metrics().splitlines()
                   if line.startswith("storage_worker_events_published_total{"))

    deadline = time.monotonic() + timeout
    last, since = published(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker kept publishing events")
        time.sleep(0.2)
        now = published()
        if now != last:
            last, since = now, time.monotonic()


def _reconcile_seconds(worker: WorkerProcess) -> float:
    """The next full re-listing's duration, from the worker's metric."""
    time.sleep(1.5)  # the bench runs the worker with RECONCILE_INTERVAL=1
    for line in worker.metrics().splitlines():
        if line.startswith("storage_worker_reconcile_seconds "):
            return float(line.split()[1])
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="commands,events,scale,transfers,clones")
    parser.add_argument("--fleet", default="10,50", help="fleet sizes (workers) for --only fleet")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    ns = parser.parse_args()
    areas = set(ns.only.split(","))
    unknown = areas - {"commands", "events", "scale", "transfers", "clones", "fleet"}
    if unknown:
        parser.error(f"unknown area(s) {', '.join(sorted(unknown))} in --only {ns.only!r}")
    try:
        fleet_sizes = [int(n) for n in ns.fleet.split(",")]
    except ValueError:
        parser.error(f"--fleet takes worker counts separated by commas, got {ns.fleet!r}")
    tag = uuid.uuid4().hex[:6]
    root = IMAGES / f"storage-worker-bench-{tag}"
    root.mkdir(parents=True)
    scratch = root / "scratch"
    scratch.mkdir()
    pool = BenchPool(f"bench-{tag}", root)
    pool.volume("info.raw", MiB)  # what volume.info reads, in every area
    table = Table()
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.platform()}, "
          f"python {platform.python_version()}", flush=True)
    began = time.monotonic()
    # Each area gets a fresh worker (its memory figures start clean) and a disk with nothing left
    # to write; transfers come last, since the gigabytes they write keep the disk busy a while.
    areas_in_order = [("commands", lambda w: (bench_commands(table, w, pool), bench_memory(table, w, pool))),
                      ("events", lambda w: bench_events(table, w, pool)),
                      ("scale", lambda w: bench_scale(table, w, root)),
                      ("transfers", lambda w: bench_transfers(table, w, pool, scratch)),
                      ("clones", lambda w: bench_clones(table, w, root, tag))]
    try:
        for index, (area, run) in enumerate(areas_in_order):
            if area not in areas:
                continue
            subprocess.run(["sync"], check=True)
            worker = WorkerProcess(f"{tag}{index}", root, root / f"state-{area}", reconcile_interval=1)
            try:
                run(worker)
            finally:
                worker.stop()
        if "fleet" in areas:
            bench_fleet(table, root, tag, fleet_sizes)
    finally:
        pool.remove()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    print(f"\n{table.render()}\n(ran in {time.monotonic() - began:.0f} s)")
    if ns.markdown:
        Path(ns.markdown).write_text(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
