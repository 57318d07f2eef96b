"""Stream mechanics of volume.upload/download without libvirtd: holes, zero detection, the hole gate,
and the URL allowlist."""

from __future__ import annotations

import os

import pytest

from worker.handlers.sources import url_allowed
from worker.virt.streams import CHUNK, ZERO_BLOCK, HoleGate, Sender, data_extents, file_items, zero_runs

KiB = 2**10
MiB = 2**20


def joined(items) -> bytes:
    return b"".join(bytes(i) if isinstance(i, int) else i for i in items)


def test_zero_runs_split_aligned_zero_blocks_and_keep_the_bytes():
    data, zero = os.urandom(ZERO_BLOCK), bytes(ZERO_BLOCK)
    cases = {
        zero * 4: [4 * ZERO_BLOCK],
        data + zero + zero + data: ["D", 2 * ZERO_BLOCK, "D"],
        zero + data + zero[:100]: [ZERO_BLOCK, "D", 100],
        data[:10]: ["D"],
        data[:10] + zero[:10]: ["D"],  # a short tail block that is not all zero stays data
        b"": [],
    }
    for buf, shape in cases.items():
        runs = list(zero_runs(buf))
        assert [r if isinstance(r, int) else "D" for r in runs] == shape
        assert joined(runs) == buf


def test_data_extents_and_file_items_follow_the_holes(tmp_path):
    path = tmp_path / "sparse.bin"
    pieces = {0: os.urandom(100 * KiB), 3 * MiB: os.urandom(MiB + 1)}
    with open(path, "wb") as handle:
        handle.truncate(8 * MiB)
        for offset, piece in pieces.items():
            handle.seek(offset)
            handle.write(piece)
    content = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, 8 * MiB))
        assert extents[0][1] == 0 and extents[-1][2] == 8 * MiB
        assert all(a[2] == b[1] for a, b in zip(extents, extents[1:])), "contiguous"
        for offset, piece in pieces.items():  # every data byte lies in a data extent
            assert any(is_data and begin <= offset and offset + len(piece) <= stop
                       for is_data, begin, stop in extents)
        items = list(file_items(fd, 8 * MiB, sparse=True))
        assert joined(items) == content
        assert all(len(i) <= CHUNK for i in items if isinstance(i, bytes))
        if os.stat(path).st_blocks * 512 < 4 * MiB:  # the file system keeps holes: they are not read
            assert sum(len(i) for i in items if isinstance(i, bytes)) < 4 * MiB
        assert joined(file_items(fd, 5 * MiB, sparse=False)) == content[:5 * MiB]
    finally:
        os.close(fd)


class FakeStream:
    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.content = bytearray()

    def send(self, data: bytes) -> int:
        self.calls.append(("data", len(data)))
        self.content += data
        return len(data)

    def sendHole(self, length: int, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self.calls.append(("hole", length))
        self.content += bytes(length)
        return 0


def test_sender_merges_holes_and_sends_zeros_while_the_gate_is_shut():
    opened_at: list[tuple[int, int]] = []

    def empty(lo: int, hi: int) -> bool:  # the volume holds data below 400 KiB only
        opened_at.append((lo, hi))
        return lo >= 400 * KiB

    gate = HoleGate(offset=0, size=8 * MiB, end=4 * MiB, empty=empty)
    stream = FakeStream()
    ticks = []
    sender = Sender(stream, gate=gate, detect_zeros=True, tick=ticks.append)
    data = os.urandom(ZERO_BLOCK)
    sender.put(data)  # [0, 64K) data
    sender.put(100 * KiB)  # hole [64K, 164K): the volume has data there: zeros
    sender.put(bytes(CHUNK))  # an all-zero chunk joins the next hole
    sender.put(data)
    sender.put(2 * MiB)  # hole over empty volume space: a real hole, and the gate stays open
    sender.put(bytes(ZERO_BLOCK) + data)
    sender.flush()
    kinds = [kind for kind, _ in stream.calls]
    assert ("hole", 100 * KiB + CHUNK) not in stream.calls, "a hole over old data must be zeros"
    assert kinds.count("hole") == 1 and ("hole", 2 * MiB + ZERO_BLOCK) in stream.calls
    assert gate.opened
    total = 3 * ZERO_BLOCK + 100 * KiB + CHUNK + 2 * MiB + ZERO_BLOCK
    assert sender.position == total == len(stream.content)
    assert sender.data_bytes == total - (2 * MiB + ZERO_BLOCK)
    assert ticks == sorted(ticks) and ticks[-1] == total


def test_hole_gate_rules():
    assert HoleGate(offset=0, size=10, end=5, always=True).allows(0, 1)
    assert not HoleGate(offset=0, size=10, end=5).allows(0, 1), "nobody can tell: no holes"
    # Known end: the hole's range and the tail after the end must both be empty.
    tail_busy = HoleGate(offset=100, size=1000, end=500, empty=lambda lo, hi: hi <= 500)
    assert not tail_busy.allows(0, 10) and not tail_busy.allows(50, 60)
    seen = []
    gate = HoleGate(offset=100, size=1000, end=500, empty=lambda lo, hi: seen.append((lo, hi)) or lo >= 200)
    assert not gate.allows(0, 50)  # [100, 150) holds data
    assert gate.allows(150, 200) and gate.allows(0, 1), "once open, always open"
    assert (500, 1000) in seen and (250, 300) in seen
    # Unknown end: everything from the hole to the volume's end must be empty.
    seen.clear()
    gate = HoleGate(offset=0, size=1000, end=None, empty=lambda lo, hi: seen.append((lo, hi)) or True)
    assert gate.allows(10, 20) and seen == [(10, 1000)]


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://images.example/ok/a.img", True),
    ("http://images.example/other/a.img", False),
    ("http://images.example:8080/a.img", True),
    ("http://images.example:80801/a.img", False),
    ("http://images.example:8080.evil.org/a.img", False),
    ("http://images.example:8080@evil.org/a.img", False),
    ("https://any.example/x", True),
    ("http://any.example/x", False),
])
def test_url_allowlist(url, allowed):
    prefixes = ["http://images.example/ok/", "http://images.example:8080", "https://"]
    assert url_allowed(url, prefixes) is allowed
    assert url_allowed(url, []) is False
