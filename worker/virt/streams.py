"""libvirt stream mechanics for volume.upload and volume.download: chunked, sparse-aware, cancellable.

Memory stays constant whatever the size: data moves in chunks of CHUNK bytes (libvirt's own stream
packet size; larger sends are split by the remote driver and measured slower here).

Holes. A sparse upload stream (VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM) is written by libvirt's fdstream
thread, which turns a hole into `lseek(+len)` then `ftruncate(position)` on a file volume, and into
written zeros on a block volume. On a file volume that has two consequences a caller must handle:

  * the first hole keeps whatever the volume held in its range (the file is only cut at the hole's end);
  * every hole cuts the file at the hole's end, so whatever lay beyond is gone and the volume shrinks
    (a 64 MiB raw volume that receives "1 MiB data, 2 MiB hole, 1 MiB data" at offset 8 MiB ends
    12 MiB long, the hole still holding the old bytes — seen on libvirt 9.0).

So `HoleGate` sends a hole as a hole only once that is provably lossless: the volume holds no data in
the hole's range and none after the end of the transfer (checked with SEEK_DATA on the volume file when
libvirt runs on this machine, or by the volume having no allocation at all). Until then holes are sent
as zeros — correct, just not sparse. After the first real hole the file ends at that hole's end, so
every later hole reads as zeros; a final hole up to the volume's former size restores its length.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator

import libvirt

KiB = 1024
CHUNK = 256 * KiB  # one libvirt stream packet
ZERO_BLOCK = 64 * KiB  # granularity at which all-zero data becomes a hole (sparse transfers)
_ZEROS = bytes(CHUNK)
_ZERO_BLOCK_BYTES = bytes(ZERO_BLOCK)

# A stream item is either data (bytes) or a hole (int: its length in bytes).
Item = bytes | int
Tick = Callable[[int], None]  # called with the transfer's position after every chunk; may raise


class TransferCancelled(Exception):
    """Raised by a tick when job.cancel asked the transfer to stop."""


def all_zero(buf: bytes) -> bool:
    n = len(buf)
    return buf == _ZEROS if n == CHUNK else buf == _ZEROS[:n] if n < CHUNK else buf.count(0) == n


def zero_runs(buf: bytes, block: int = ZERO_BLOCK) -> Iterator[Item]:
    """`buf` as data and holes: every aligned `block` of zeros becomes (part of) a hole."""
    if all_zero(buf):
        if buf:
            yield len(buf)
        return
    start, zero_start = 0, None  # current run start; where the current zero run began (None: in data)
    for at in range(0, len(buf), block):
        piece = buf[at:at + block]
        is_zero = piece == _ZERO_BLOCK_BYTES if len(piece) == block else all_zero(piece)
        if is_zero and zero_start is None:
            if at > start:
                yield buf[start:at]
            zero_start = start = at
        elif not is_zero and zero_start is not None:
            yield at - zero_start
            zero_start, start = None, at
    if zero_start is not None:
        yield len(buf) - zero_start
    elif start < len(buf):
        yield buf[start:] if start else buf


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[bool, int, int]]:
    """(is_data, begin, stop) sections of the file `fd` covering [start, end), found with
    SEEK_DATA/SEEK_HOLE; a file system that cannot tell is all data."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here to the end of the file
                yield False, pos, end
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield True, pos, end
                return
            raise
        if data > pos:
            stop = min(data, end)
            yield False, pos, stop
            pos = stop
            continue
        try:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            hole = end
        stop = min(max(hole, pos + 1), end)
        yield True, pos, stop
        pos = stop


def file_items(fd: int, length: int, *, sparse: bool) -> Iterator[Item]:
    """The first `length` bytes of the file `fd` as stream items, read with pread in CHUNK pieces.
    Sparse: the file's holes become holes without being read."""
    sections = data_extents(fd, 0, length) if sparse else iter([(True, 0, length)])
    for is_data, begin, stop in sections:
        if not is_data:
            yield stop - begin
            continue
        pos = begin
        while pos < stop:
            buf = os.pread(fd, min(CHUNK, stop - pos), pos)
            if not buf:
                raise OSError(errno.EIO, f"the source file ended at {pos} bytes, {length} were expected")
            yield buf
            pos += len(buf)


def volume_has_data(fd: int, begin: int, end: int) -> bool:
    """Whether the volume file `fd` holds data (not holes) anywhere in [begin, end)."""
    if begin >= end:
        return False
    try:
        return os.lseek(fd, begin, os.SEEK_DATA) < end
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        return True  # cannot tell: assume data, which only costs sparseness


class HoleGate:
    """Decides whether a hole at transfer position [a, b) may be sent as a hole (see the module doc).

    `empty(lo, hi)` answers "the volume holds no data in [lo, hi)" in volume offsets, or is None when
    nobody can tell (then holes are real only if `always`). `end` is the end of the transfer in
    volume offsets when known; `size` the volume file's length before the upload.
    """

    def __init__(self, *, offset: int, size: int, end: int | None, always: bool = False,
                 empty: Callable[[int, int], bool] | None = None):
        self.offset = offset
        self.size = size
        self.end = end
        self._always = always
        self._empty = empty
        self.opened = always  # a real hole has been (or may be) sent
        self._tail_ok: bool | None = None

    def allows(self, a: int, b: int) -> bool:
        if self.opened:
            return True
        if self._empty is None:
            return False
        lo, hi = self.offset + a, self.offset + b
        if self.end is not None:
            if self._tail_ok is None:
                self._tail_ok = self._empty(self.end, self.size)
            ok = self._tail_ok and self._empty(lo, hi)
        else:
            ok = self._empty(lo, max(hi, self.size))
        self.opened = ok
        return ok


class Sender:
    """Writes items into an upload stream in order. Holes go through `gate` (None: no holes at all,
    everything is data, as a non-sparse stream needs); with `detect_zeros`, all-zero blocks of data
    are holes too. Consecutive holes are merged into one."""

    def __init__(self, stream: libvirt.virStream, *, gate: HoleGate | None, detect_zeros: bool, tick: Tick):
        self.stream = stream
        self.gate = gate
        self.detect_zeros = detect_zeros and gate is not None
        self.tick = tick
        self.position = 0  # bytes of the source consumed, holes included
        self.data_bytes = 0  # bytes sent as data
        self._written = 0  # the stream's position
        self._pending_hole = 0

    def put(self, item: Item) -> None:
        if isinstance(item, int):
            self._hole(item)
        elif self.detect_zeros:
            for part in zero_runs(item):
                if isinstance(part, int):
                    self._hole(part)
                else:
                    self._send(part)
        else:
            self._send(item)
        self.tick(self.position)

    def put_all(self, items: Iterable[Item]) -> None:
        for item in items:
            self.put(item)

    def flush(self) -> None:
        """Send a pending hole: call once the source is exhausted."""
        length, self._pending_hole = self._pending_hole, 0
        if not length:
            return
        start = self._written
        if self.gate is not None and self.gate.allows(start, start + length):
            self.stream.sendHole(length, 0)
            self._written += length
            return
        left = length
        while left:  # a hole that cannot be one: zeros, a chunk at a time
            n = min(left, CHUNK)
            self._write(_ZEROS if n == CHUNK else _ZEROS[:n])
            left -= n
            if left:
                self.tick(self.position)

    def _hole(self, length: int) -> None:
        self._pending_hole += length
        self.position += length

    def _send(self, buf: bytes) -> None:
        self.flush()
        self._write(buf)
        self.position += len(buf)

    def _write(self, buf: bytes) -> None:
        while buf:
            sent = self.stream.send(buf)
            if sent <= 0:
                raise libvirt.libvirtError(f"the stream accepted no data (send returned {sent})")
            self.data_bytes += sent
            self._written += sent
            buf = buf[sent:]


def received(stream: libvirt.virStream, *, sparse: bool) -> Iterator[Item]:
    """A download stream's content as items, until it ends. Sparse: the stream's holes are holes."""
    flags = libvirt.VIR_STREAM_RECV_STOP_AT_HOLE if sparse else 0
    while True:
        got = stream.recvFlags(CHUNK, flags)
        if got == -3:
            yield stream.recvHole(0)
        elif isinstance(got, int):
            raise libvirt.libvirtError(f"unexpected answer {got} from a blocking stream")
        elif not got:
            return
        else:
            yield got


def receive(stream: libvirt.virStream, fd: int, *, sparse: bool, tick: Tick) -> tuple[int, int]:
    """Read a download stream into the file `fd` from its current position. Sparse: holes in the
    stream, and all-zero blocks of data, become seeks (the caller gives the file its final length).
    Returns (bytes of the stream, holes included; data bytes received)."""
    position = data_bytes = 0
    for got in received(stream, sparse=sparse):
        if isinstance(got, int):
            os.lseek(fd, got, os.SEEK_CUR)
            position += got
        else:
            data_bytes += len(got)
            for part in (zero_runs(got) if sparse else (got,)):
                if isinstance(part, int):
                    os.lseek(fd, part, os.SEEK_CUR)
                else:
                    _write_all(fd, part)
            position += len(got)
        tick(position)
    return position, data_bytes


def _write_all(fd: int, buf: bytes) -> None:
    view = memoryview(buf)
    while view:
        view = view[os.write(fd, view):]


def abort(stream: libvirt.virStream | None) -> None:
    """Abort a stream on a failure path; the original error is the one worth reporting."""
    if stream is None:
        return
    try:
        stream.abort()
    except libvirt.libvirtError:
        pass
