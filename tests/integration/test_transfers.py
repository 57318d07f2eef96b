"""volume.upload and volume.download through the whole path, checked byte for byte on the files."""

from __future__ import annotations

import glob
import hashlib
import http.server
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import call_async, error_of, ok, wait_for

pytestmark = pytest.mark.integration

KiB = 2**10
MiB = 2**20
GiB = 2**30


# ---- helpers ------------------------------------------------------------------------------------

def sha256(path: str | Path, offset: int = 0, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = size if size is not None else os.path.getsize(path) - offset
        while left > 0:
            chunk = handle.read(min(left, 4 * MiB))
            assert chunk, f"{path} ended early"
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> int:
    """A file of `size` bytes that holds `pieces` (offset -> data) and holes elsewhere."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)
    return sum(len(d) for d in pieces.values())


def allocated(path: str | Path) -> int:
    return os.stat(path).st_blocks * 512


def make_volume(client, pool: str, name: str, capacity: int, fill: bytes | None = None) -> dict:
    """A raw volume; `fill` repeats a byte pattern over its whole length (written straight to the file)."""
    volume = ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": capacity}))
    if fill is not None:
        block = (fill * (MiB // len(fill) + 1))[:MiB]
        with open(volume["path"], "r+b") as handle:
            for _ in range(capacity // MiB):
                handle.write(block)
    return volume


class Site:
    """A local HTTP server: /<name> with Content-Length, /nolength/<name> without it (the connection's
    end marks the body's end), /slow/<name> in 64 KiB pieces with a pause between them,
    /to-ok/<name> and /to-other/<name> redirect to /ok/<name> and /other/<name>."""

    def __init__(self, root: Path, pause: float = 0.02):
        self.root = root
        self.pause = pause
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802
                parts = self.path.strip("/").split("/")
                mode = parts[-2] if len(parts) > 1 else ""
                file = site.root / parts[-1]
                if mode in ("to-ok", "to-other"):  # redirects
                    self.send_response(302)
                    self.send_header("Location", f"/{mode[3:]}/{parts[-1]}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode != "nolength":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if mode == "slow":
                        for at in range(0, len(data), 64 * KiB):
                            self.wfile.write(data[at:at + 64 * KiB])
                            self.wfile.flush()
                            time.sleep(site.pause)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(tmp_path) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    served = Site(root)
    yield served
    served.close()


@pytest.fixture
def url_worker(make_worker, site):
    """A worker that may read URLs under <site>/ok/ (and nothing else), with a client and a pool."""
    harness = make_worker(url_allowlist=[f"{site.base}/ok/"])
    client = harness.client()
    pool = harness.running_pool(client)
    return harness, client, pool


# ---- content round trips ------------------------------------------------------------------------

def test_non_sparse_round_trip_is_byte_exact_and_announced(harness, client, pool, tap):
    events = tap(harness.settings.topology.events_exchange, f"{harness.host}.volume.uploaded")
    source = harness.root / "plain.bin"
    source.write_bytes(os.urandom(8 * MiB + 12345))
    make_volume(client, pool, "plain.raw", 9 * MiB)

    up = ok(client.call("volume.upload", {"pool": pool, "name": "plain.raw", "source": {"path": str(source)},
                                          "sparse": False}, command_id=f"up-{uuid.uuid4().hex[:8]}"))
    assert up["changed"] is True and up["bytes"] == 8 * MiB + 12345
    assert up["pool"] == pool and up["name"] == "plain.raw" and up["capacity"] == 9 * MiB
    assert sha256(up["path"], 0, 8 * MiB + 12345) == sha256(source)

    out = harness.root / "out" / "plain.copy"
    out.parent.mkdir()
    down = ok(client.call("volume.download", {"pool": pool, "name": "plain.raw", "destination": {"path": str(out)},
                                              "length": 8 * MiB + 12345, "sparse": False}))
    assert down == {"bytes": 8 * MiB + 12345, "path": str(out)}
    assert sha256(out) == sha256(source)
    assert not glob.glob(str(out.parent / ".*.part"))

    (event,) = [e for e in events.bodies(wait=1.0) if e["data"]["volume"]["name"] == "plain.raw"]
    assert event["type"] == "storage.volume.uploaded" and event["commandid"].startswith("up-")
    assert event["data"]["origin"] == "command" and event["data"]["volume"]["capacity"] == 9 * MiB


def test_sparse_round_trip_keeps_holes(harness, client, pool):
    source = harness.root / "sparse.img"
    pieces = {0: os.urandom(MiB), 13 * MiB: os.urandom(MiB), 40 * MiB + 4 * KiB: os.urandom(MiB),
              63 * MiB: os.urandom(MiB)}
    data = write_sparse(source, 64 * MiB, pieces)
    assert allocated(source) < 6 * MiB
    make_volume(client, pool, "sparse.raw", 64 * MiB)

    up = ok(client.call("volume.upload", {"pool": pool, "name": "sparse.raw", "source": {"path": str(source)}}))
    assert up["bytes"] == data, "holes are not sent"
    assert up["capacity"] == 64 * MiB and os.path.getsize(up["path"]) == 64 * MiB
    assert up["allocation"] < data + 2 * MiB, up
    assert allocated(up["path"]) < data + 2 * MiB
    assert sha256(up["path"]) == sha256(source)

    out = harness.root / "sparse.copy"
    down = ok(client.call("volume.download", {"pool": pool, "name": "sparse.raw", "destination": {"path": str(out)}}))
    assert down["bytes"] == data
    assert os.path.getsize(out) == 64 * MiB and allocated(out) < data + 2 * MiB
    assert sha256(out) == sha256(source)


def test_sparse_upload_over_old_data_zeroes_the_holes_and_keeps_the_rest(harness, client, pool):
    """libvirt turns a hole sent into a file volume into lseek+ftruncate: the first hole keeps the old
    bytes and every hole cuts the file. The worker must still leave exactly the source in the range
    and the volume's other bytes and length untouched."""
    volume = make_volume(client, pool, "old.raw", 32 * MiB, fill=b"\xaa")
    source = harness.root / "slice.img"
    pieces = {MiB: os.urandom(MiB), 5 * MiB: os.urandom(512 * KiB)}
    write_sparse(source, 8 * MiB, pieces)

    ok(client.call("volume.upload", {"pool": pool, "name": "old.raw", "source": {"path": str(source)},
                                     "offset": 4 * MiB}))
    assert os.path.getsize(volume["path"]) == 32 * MiB
    assert sha256(volume["path"], 4 * MiB, 8 * MiB) == sha256(source)
    old = sha256_of(b"\xaa" * 4 * MiB)
    assert sha256(volume["path"], 0, 4 * MiB) == old
    assert sha256(volume["path"], 12 * MiB, 4 * MiB) == old and sha256(volume["path"], 28 * MiB) == old

    # The same source over the whole of a filled volume: all holes read as zeros again.
    whole = harness.root / "whole.img"
    write_sparse(whole, 32 * MiB, {3 * MiB: os.urandom(MiB), 20 * MiB: os.urandom(MiB)})
    ok(client.call("volume.upload", {"pool": pool, "name": "old.raw", "source": {"path": str(whole)}}))
    assert os.path.getsize(volume["path"]) == 32 * MiB
    assert sha256(volume["path"]) == sha256(whole)


def test_offset_and_length_write_and_read_a_range(harness, client, pool):
    volume = make_volume(client, pool, "range.raw", 16 * MiB, fill=b"\x11\x22")
    before = Path(volume["path"]).read_bytes()
    source = harness.root / "slice.bin"
    slice_data = os.urandom(4 * MiB)
    source.write_bytes(slice_data)

    up = ok(client.call("volume.upload", {"pool": pool, "name": "range.raw", "source": {"path": str(source)},
                                          "offset": 6 * MiB, "length": 3 * MiB}))
    assert up["bytes"] == 3 * MiB and up["capacity"] == 16 * MiB
    expected = before[:6 * MiB] + slice_data[:3 * MiB] + before[9 * MiB:]
    assert Path(volume["path"]).read_bytes() == expected

    out = harness.root / "range.out"
    down = ok(client.call("volume.download", {"pool": pool, "name": "range.raw", "destination": {"path": str(out)},
                                              "offset": 5 * MiB, "length": 5 * MiB}))
    assert down["bytes"] == 5 * MiB
    assert out.read_bytes() == expected[5 * MiB:10 * MiB]

    message = error_of(client.call("volume.download", {"pool": pool, "name": "range.raw",
                                                       "destination": {"path": str(out)},
                                                       "offset": 12 * MiB, "length": 5 * MiB}), "failed", "invalid")
    assert str(16 * MiB) in message and str(17 * MiB) in message
    assert out.read_bytes() == expected[5 * MiB:10 * MiB], "a refused download leaves the old file alone"


# ---- URL sources --------------------------------------------------------------------------------

def test_upload_from_allowed_url(url_worker, site):
    harness, client, pool = url_worker
    data = os.urandom(2 * MiB) + bytes(3 * MiB) + os.urandom(MiB + 77)
    (site.root / "image.bin").write_bytes(data)
    volume = make_volume(client, pool, "web.raw", 8 * MiB)

    up = ok(client.call("volume.upload", {"pool": pool, "name": "web.raw",
                                          "source": {"url": f"{site.base}/ok/image.bin"}}))
    assert up["bytes"] == len(data) - 3 * MiB, "all-zero chunks of a URL become holes"
    assert sha256(volume["path"], 0, len(data)) == sha256_of(data)
    assert allocated(volume["path"]) < len(data) - 2 * MiB

    # Without Content-Length: streamed anyway, non-sparse this time.
    up = ok(client.call("volume.upload", {"pool": pool, "name": "web.raw", "sparse": False,
                                          "source": {"url": f"{site.base}/ok/nolength/image.bin"}}))
    assert up["bytes"] == len(data) and sha256(volume["path"], 0, len(data)) == sha256_of(data)

    missing = error_of(client.call("volume.upload", {"pool": pool, "name": "web.raw",
                                                     "source": {"url": f"{site.base}/ok/nope.bin"}}),
                       "failed", "not_found")
    assert "404" in missing and "nope.bin" in missing


def test_url_outside_the_allowlist_is_forbidden(url_worker, site):
    harness, client, pool = url_worker
    (site.root / "image.bin").write_bytes(b"x" * 1000)
    make_volume(client, pool, "web.raw", MiB)
    for url in (f"{site.base}/other/image.bin", f"{site.base}/ok", "http://example.org/ok/image.bin"):
        message = error_of(client.call("volume.upload", {"pool": pool, "name": "web.raw", "source": {"url": url}}),
                           "rejected", "forbidden")
        assert url in message
    # A redirect is followed only where the allowlist allows.
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "web.raw",
                                                     "source": {"url": f"{site.base}/ok/to-other/image.bin"}}),
                       "rejected", "forbidden")
    assert f"{site.base}/other/image.bin" in message
    assert ok(client.call("volume.upload", {"pool": pool, "name": "web.raw",
                                            "source": {"url": f"{site.base}/ok/to-ok/image.bin"}}))["bytes"] == 1000


def test_url_without_length_larger_than_the_volume_is_aborted(url_worker, site):
    harness, client, pool = url_worker
    (site.root / "big.bin").write_bytes(os.urandom(3 * MiB))
    volume = make_volume(client, pool, "small.raw", 2 * MiB)
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "small.raw",
                                                     "source": {"url": f"{site.base}/ok/nolength/big.bin"}}),
                       "failed", "invalid")
    assert str(2 * MiB) in message and "aborted" in message
    assert os.path.getsize(volume["path"]) == 2 * MiB


# ---- refusals -----------------------------------------------------------------------------------

def test_paths_outside_the_roots_are_forbidden(harness, client, pool, tmp_path):
    make_volume(client, pool, "v.raw", MiB)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(b"s" * 4096)
    link = harness.root / "innocent.bin"
    link.symlink_to(secret)

    for path in (str(secret), "/etc/hostname", str(link)):
        message = error_of(client.call("volume.upload", {"pool": pool, "name": "v.raw", "source": {"path": path}}),
                           "rejected", "forbidden")
        assert path in message and "allowed roots" in message
    message = error_of(client.call("volume.download", {"pool": pool, "name": "v.raw",
                                                       "destination": {"path": str(outside / "copy.bin")}}),
                       "rejected", "forbidden")
    assert str(outside / "copy.bin") in message
    assert not (outside / "copy.bin").exists() and not list(outside.glob(".*.part"))

    volume_path = ok(client.call("volume.info", {"pool": pool, "name": "v.raw"}))["path"]
    message = error_of(client.call("volume.download", {"pool": pool, "name": "v.raw",
                                                       "destination": {"path": volume_path}}), "rejected", "forbidden")
    assert "'v.raw'" in message and "volume.upload" in message

    link_out = harness.root / "link-out.bin"
    link_out.symlink_to(outside / "copy.bin")
    error_of(client.call("volume.download", {"pool": pool, "name": "v.raw", "destination": {"path": str(link_out)}}),
             "rejected", "forbidden")

    message = error_of(client.call("volume.download", {"pool": pool, "name": "v.raw",
                                                       "destination": {"path": str(harness.root / "no" / "x.bin")}}),
                       "failed", "invalid")
    assert "does not exist" in message
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "v.raw",
                                                     "source": {"path": str(harness.root / "absent.bin")}}),
                       "failed", "not_found")
    assert "absent.bin" in message


def test_source_larger_than_the_volume_is_refused_before_writing(harness, client, pool):
    volume = make_volume(client, pool, "small.raw", 4 * MiB, fill=b"\x5a")
    before = sha256(volume["path"])
    source = harness.root / "big.bin"
    source.write_bytes(os.urandom(5 * MiB))
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "small.raw",
                                                     "source": {"path": str(source)}}), "failed", "invalid")
    assert str(5 * MiB) in message and str(4 * MiB) in message
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "small.raw", "source": {"path": str(source)},
                                                     "offset": 2 * MiB, "length": 3 * MiB}), "failed", "invalid")
    assert str(5 * MiB) in message and str(4 * MiB) in message
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "small.raw", "source": {"path": str(source)},
                                                     "length": 6 * MiB}), "failed", "invalid")
    assert str(6 * MiB) in message and str(5 * MiB) in message
    assert sha256(volume["path"]) == before and os.path.getsize(volume["path"]) == 4 * MiB


def test_upload_to_a_missing_volume_is_not_found(harness, client, pool):
    source = harness.root / "a.bin"
    source.write_bytes(b"a" * 100)
    message = error_of(client.call("volume.upload", {"pool": pool, "name": "ghost.raw",
                                                     "source": {"path": str(source)}}), "failed", "not_found")
    assert "'ghost.raw'" in message
    message = error_of(client.call("volume.download", {"pool": pool, "name": "ghost.raw",
                                                       "destination": {"path": str(harness.root / "g.bin")}}),
                       "failed", "not_found")
    assert "'ghost.raw'" in message and not (harness.root / "g.bin").exists()


# ---- progress and cancellation ------------------------------------------------------------------

def test_progress_events_during_a_slow_upload(url_worker, site, tap):
    harness, client, pool = url_worker
    progress = tap(harness.settings.topology.events_exchange, f"{harness.host}.job.progress")
    data = os.urandom(10 * MiB)  # 160 pieces of 64 KiB, 20 ms apart: more than 3 s
    (site.root / "slow.bin").write_bytes(data)
    volume = make_volume(client, pool, "slow.raw", 10 * MiB)
    command_id = f"slow-{uuid.uuid4().hex[:8]}"
    up = ok(client.call("volume.upload", {"pool": pool, "name": "slow.raw",
                                          "source": {"url": f"{site.base}/ok/slow/slow.bin"}}, command_id=command_id))
    assert up["bytes"] == len(data) and sha256(volume["path"]) == sha256_of(data)

    events = [e for e in progress.bodies(wait=1.0) if e["data"]["id"] == command_id]
    assert len(events) >= 3, events
    assert all(e["type"] == "storage.job.progress" and e["commandid"] == command_id
               and e["data"]["op"] == "volume.upload" and e["data"]["bytes_total"] == len(data) for e in events)
    done = [e["data"]["bytes_done"] for e in events]
    assert done == sorted(done) and len(set(done)) >= 3, done
    assert done[-1] == len(data)
    assert any(0 < d < len(data) and e["data"]["rate"] > 0 for d, e in zip(done, events))


def test_cancel_an_upload_from_a_slow_url(url_worker, site):
    harness, client, pool = url_worker
    data = os.urandom(2 * MiB) + bytes(2 * MiB) + os.urandom(4 * MiB)  # a hole early on: the volume is cut
    (site.root / "slow.bin").write_bytes(data)
    volume = make_volume(client, pool, "cancel.raw", 16 * MiB)
    command_id = f"cancel-up-{uuid.uuid4().hex[:8]}"
    thread, out = call_async(harness.client, "volume.upload",
                             {"pool": pool, "name": "cancel.raw", "source": {"url": f"{site.base}/ok/slow/slow.bin"}},
                             command_id=command_id)
    time.sleep(1.5)  # past the hole, well before the end (about 2.6 s)
    asked = time.monotonic()
    answer = ok(client.call("job.cancel", {"id": command_id}))
    assert answer == {"id": command_id, "state": "cancelling"}
    thread.join(timeout=30)
    took = time.monotonic() - asked
    (result,) = out
    message = error_of(result, "cancelled", "cancelled")
    assert "job.cancel" in message and f"of {len(data)} bytes" in message
    assert took < 1.5, f"the upload stopped {took:.2f} s after job.cancel"
    assert os.path.getsize(volume["path"]) == 16 * MiB, "the volume keeps its length after a cancelled upload"
    info = ok(client.call("volume.info", {"pool": pool, "name": "cancel.raw"}))
    assert info["capacity"] == 16 * MiB


def test_cancel_a_download_leaves_no_file(harness, client, pool):
    make_volume(client, pool, "huge.raw", 8 * GiB)  # sparse, but downloaded non-sparse: GiB of zeros
    out = harness.root / "huge.img"
    command_id = f"cancel-down-{uuid.uuid4().hex[:8]}"
    thread, results = call_async(harness.client, "volume.download",
                                 {"pool": pool, "name": "huge.raw", "destination": {"path": str(out)},
                                  "sparse": False}, command_id=command_id)
    parts = wait_for(lambda: [p for p in glob.glob(str(harness.root / ".huge.img.*.part"))
                              if os.path.getsize(p) > 8 * MiB], 20, "the download's .part file to grow")
    asked = time.monotonic()
    assert ok(client.call("job.cancel", {"id": command_id})) == {"id": command_id, "state": "cancelling"}
    thread.join(timeout=30)
    took = time.monotonic() - asked
    (result,) = results
    message = error_of(result, "cancelled", "cancelled")
    assert f"of {8 * GiB} bytes" in message
    assert took < 1.5, f"the download stopped {took:.2f} s after job.cancel"
    assert not out.exists() and not any(os.path.exists(p) for p in parts)
    assert not glob.glob(str(harness.root / ".huge.img.*"))


def test_call_reports_progress_to_a_callback(harness, client, pool, tmp_path):
    """What `storage-worker call` draws its progress bar from."""
    size = 1024 * MiB
    ok(client.call("volume.create", {"pool": pool, "name": "bar.raw", "capacity": size}))
    source = harness.root / "bar-source.bin"
    with open(source, "wb") as handle:
        for _ in range(size // (8 * MiB)):
            handle.write(os.urandom(8 * MiB))
    seen = []
    result = client.call("volume.upload", {"pool": pool, "name": "bar.raw", "source": {"path": str(source)},
                                           "sparse": False}, on_progress=seen.append, timeout=120)
    ok(result)
    assert seen, "no progress reached the callback"
    assert seen[-1].bytes_done == seen[-1].bytes_total == size
    assert all(p.op == "volume.upload" and p.id == result.id for p in seen)


def test_the_pool_refresh_an_upload_causes_carries_the_upload_command(harness, client, pool, tap, tmp_path):
    events = tap(harness.settings.topology.events_exchange, f"{harness.host}.pool.refreshed")
    ok(client.call("volume.create", {"pool": pool, "name": "up.raw", "capacity": MiB}))
    source = harness.root / "up.bin"
    source.write_bytes(os.urandom(MiB))
    ok(client.call("volume.upload", {"pool": pool, "name": "up.raw", "source": {"path": str(source)}},
                   command_id="upload-refresh-1"))
    refreshed = [e for e in events.bodies(wait=1.5) if e["data"]["pool"]["name"] == pool]
    assert refreshed and all(e.get("commandid") == "upload-refresh-1" for e in refreshed)
