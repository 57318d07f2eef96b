"""volume.upload and volume.download: bytes between a volume and a worker-local file or an http(s) URL.

upload:   source{path} (under ALLOWED_ROOTS) or source{url} (under a URL_ALLOWLIST prefix)
          --> libvirt upload stream at `offset` --> the existing volume
download: the volume's range [offset, offset+length) --> libvirt download stream
          --> `.name.<random>.part` next to destination{path} --> os.replace onto the final name

Both move data in constant memory through worker/virt/streams.py (which also explains why holes
sent into a file volume need care), report storage.job.progress about once a second, and stop within
a chunk when job.cancel sets ctx.cancel: the stream is aborted and the command ends `cancelled`.
Everything is checked before a byte moves: policy (forbidden), the volume (not_found), sizes (invalid).
A URL source without Content-Length is checked as it streams and aborted once it passes the volume.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import queue
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import libvirt

from messages.events import EventType
from messages.operations import VOLUME_DOWNLOAD, VOLUME_UPLOAD
from messages.payloads import VolumeDownloaded, VolumeUploaded
from messages.results import ErrorCode
from messages.volumes import VolumeDownloadArgs, VolumeUploadArgs
from worker.errors import OperationError, forbidden, invalid, not_found
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.handlers.paths import check_local_file
from worker.virt import streams
from worker.virt.describe import volume_object
from worker.virt.streams import CHUNK, HoleGate, Item, Sender, TransferCancelled

log = logging.getLogger(__name__)

URL_TIMEOUT = 60.0  # seconds a URL source may stay silent (connect, headers, each read)
_URL_QUEUE = 4  # chunks read ahead from a URL: memory is bounded by (_URL_QUEUE + 2) * CHUNK
_POLL = 0.05  # how often a wait for a URL chunk looks at ctx.cancel
# A download asks libvirt for this much at a time. The libvirt client has no flow control: while the
# worker's libvirt event loop runs, it reads everything the daemon sends into memory, however slowly
# the destination is written (a 1 GiB download onto a busy disk peaked at 400 MiB RSS in one stream).
# Bounded segments bound that buffer.
DOWNLOAD_SEGMENT = 32 * 2**20


# ---- volume.upload ------------------------------------------------------------------------------

@handles(VOLUME_UPLOAD)
def upload(ctx: Context, a: VolumeUploadArgs) -> VolumeUploaded:
    source = _source(ctx, a)  # policy first: a forbidden source is refused before anything else
    try:
        return _upload(ctx, a, source)
    except TransferCancelled:  # while connecting to a URL source, before any byte moved
        raise OperationError(ErrorCode.cancelled, f"volume.upload into volume {a.name!r} in pool {a.pool!r} "
                                                  f"cancelled by job.cancel before any byte was written") from None
    finally:
        source.close()


def _upload(ctx: Context, a: VolumeUploadArgs, source: _FileSource | _UrlSource) -> VolumeUploaded:
    pool = ctx.active_pool(a.pool)
    vol = ctx.volume(pool, a.name)
    vol_type, capacity, allocation = vol.info()
    # A failed sparse try may have cut the volume file: every try aims at the length of the first.
    length_before = ctx.memo.setdefault("upload.volume_length", _physical(vol, capacity))
    where = f"volume {a.name!r} in pool {a.pool!r}"
    if a.offset > capacity:
        raise invalid(f"offset {a.offset} is past the end of {where} (capacity {capacity} bytes)")

    size = source.start(ctx.cancel)  # None: a URL without Content-Length
    if a.length is not None and size is not None and a.length > size:
        raise invalid(f"length {a.length} is larger than the {source.what}, which has {size} bytes")
    length = a.length if a.length is not None else size
    if length is not None and a.offset + length > capacity:
        raise invalid(f"the {source.what} does not fit: {length} bytes written at offset {a.offset} would end "
                      f"at byte {a.offset + length}, past the capacity of {where} ({capacity} bytes); "
                      f"nothing was written")
    if length == 0:
        return VolumeUploaded(**volume_object(a.pool, vol).model_dump(), changed=ctx.changed, bytes=0)

    total = length or 0  # progress: 0 while the length is unknown
    items: Iterator[Item] = source.items(length, sparse=a.sparse)
    if length is None:
        items = _within_capacity(items, a.offset, capacity, source.what, where)
    started = time.monotonic()
    stream: libvirt.virStream | None = None
    volume_fd: int | None = None
    sender: Sender | None = None
    try:
        gate = None
        if a.sparse:
            gate, volume_fd = _hole_gate(ctx, vol, vol_type, allocation, a, length, length_before)
        stream = ctx.conn.newStream(0)
        sender = Sender(stream, gate=gate, detect_zeros=a.sparse, tick=_ticker(ctx, total))
        flags = libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM if a.sparse else 0
        vol.upload(stream, a.offset, length if length is not None else capacity - a.offset, flags)
        ctx.changed = True
        ctx.progress.update(0, total)
        sender.put_all(items)
        sender.flush()
        stream.finish()
        stream = None
    except TransferCancelled:
        raise OperationError(ErrorCode.cancelled,
                             f"volume.upload into {where} cancelled by job.cancel after "
                             f"{sender.position if sender else 0} of {total or 'an unknown number of'} bytes") from None
    except OSError as exc:
        raise _source_error(exc, source.what) from None
    finally:
        if volume_fd is not None:
            os.close(volume_fd)
        if stream is not None:
            streams.abort(stream)
            _restore_length(ctx, vol, vol_type, length_before, best_effort=True)
    _restore_length(ctx, vol, vol_type, length_before, best_effort=False)

    done = sender.position
    ctx.progress.update(done, length or done, final=True)
    uploaded = volume_object(a.pool, vol)
    ctx.volume_event(EventType.volume_uploaded, uploaded)
    _after_change(ctx, uploaded)
    log.info("volume uploaded", extra={"command_id": ctx.command.id, "pool": a.pool, "volume": a.name,
                                       "bytes": sender.data_bytes, "length": done,
                                       "seconds": round(time.monotonic() - started, 3)})
    return VolumeUploaded(**uploaded.model_dump(), changed=True, bytes=sender.data_bytes)


def _hole_gate(ctx: Context, vol: libvirt.virStorageVol, vol_type: int, allocation: int,
               a: VolumeUploadArgs, length: int | None, length_before: int) -> tuple[HoleGate, int | None]:
    """When a hole may be sent as one (see worker/virt/streams.py): always into a block device
    (libvirt writes zeros there); into a file only where the volume holds nothing that a hole could
    keep or cut off — looked at with SEEK_DATA when the file is on this machine, otherwise only an
    unallocated volume qualifies."""
    end = a.offset + length if length is not None else None
    if vol_type == libvirt.VIR_STORAGE_VOL_BLOCK:
        return HoleGate(offset=a.offset, size=length_before, end=end, always=True), None
    fd = None
    if ctx.libvirt_is_local and vol_type == libvirt.VIR_STORAGE_VOL_FILE:
        try:
            fd = os.open(vol.path(), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None
    if fd is not None:
        def empty(lo: int, hi: int) -> bool:
            return not streams.volume_has_data(fd, lo, hi)
    elif allocation == 0:
        def empty(lo: int, hi: int) -> bool:
            return True
    else:
        empty = None
    return HoleGate(offset=a.offset, size=length_before, end=end, empty=empty), fd


def _restore_length(ctx: Context, vol: libvirt.virStorageVol, vol_type: int, length: int, *,
                    best_effort: bool) -> None:
    """Give a file volume back the length a sparse upload's holes cut off: a one-byte hole ending at
    the old length (libvirt seeks and truncates up to it; no byte changes)."""
    if vol_type != libvirt.VIR_STORAGE_VOL_FILE or length <= 0:
        return
    stream = None
    try:
        if _physical(vol, length) >= length:
            return
        stream = ctx.conn.newStream(0)
        vol.upload(stream, length - 1, 1, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        stream.sendHole(1, 0)
        stream.finish()
        stream = None
    except (libvirt.libvirtError, OperationError) as exc:
        if not best_effort:
            raise
        log.warning("could not give the volume back its length after a failed upload",
                    extra={"command_id": ctx.command.id, "volume": vol.name(), "length": length,
                           "error": str(exc)})
    finally:
        streams.abort(stream)


def _within_capacity(items: Iterator[Item], offset: int, capacity: int, what: str, where: str) -> Iterator[Item]:
    """A source of unknown length, stopped with a clear error as soon as it would pass the volume."""
    seen = 0
    for item in items:
        seen += item if isinstance(item, int) else len(item)
        if offset + seen > capacity:
            raise invalid(f"the {what} sent no Content-Length and turned out larger than {where}: after "
                          f"{seen} bytes, written at offset {offset}, it passed the capacity of {capacity} bytes; "
                          f"the upload was aborted and the volume holds the first {capacity - offset} bytes of it")
        yield item


def _source(ctx: Context, a: VolumeUploadArgs) -> _FileSource | _UrlSource:
    if a.source.path is not None:
        return _FileSource(a.source.path, ctx.settings.allowed_roots)
    url = a.source.url or ""
    allowlist = ctx.settings.url_allowlist
    if not url_allowed(url, allowlist):
        raise forbidden(f"source URL {url!r} does not start with any prefix of URL_ALLOWLIST {allowlist}"
                        if allowlist else f"source URL {url!r} is refused: URL_ALLOWLIST is empty, so URL "
                                          f"sources are turned off on this worker")
    return _UrlSource(url, allowlist, a.length)


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """`url` starts with one of `prefixes`. A prefix that ends inside the host part (no path) must match
    the URL's whole host and port, so that "http://images.example" allows neither
    "http://images.example.evil.org/" nor "http://images.example@evil.org/"."""
    for prefix in prefixes:
        if not prefix or not url.startswith(prefix):
            continue
        parts = urlsplit(prefix)
        if parts.path or parts.query or parts.fragment or not parts.netloc:
            return True
        if urlsplit(url).netloc.lower() == parts.netloc.lower():
            return True
    return False


class _FileSource:
    """A regular file under ALLOWED_ROOTS, opened once; the opened file is checked again, so a path
    swapped for a link between the check and the open is caught."""

    def __init__(self, path: str, roots: list[str]):
        real = check_local_file(path, roots, "upload source")
        self.what = f"source file {path!r}"
        try:
            self.fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _source_error(exc, self.what) from None
        try:
            opened = _fd_path(self.fd)
            if opened is not None:
                check_local_file(opened, roots, "upload source")
            info = os.fstat(self.fd)
            if not stat.S_ISREG(info.st_mode):
                raise invalid(f"{self.what} is not a regular file")
        except BaseException:
            os.close(self.fd)
            raise
        self.size = info.st_size

    def start(self, cancel: threading.Event) -> int:
        return self.size

    def items(self, length: int | None, *, sparse: bool) -> Iterator[Item]:
        return streams.file_items(self.fd, self.size if length is None else length, sparse=sparse)

    def close(self) -> None:
        os.close(self.fd)


class _AllowlistRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is followed only to a URL that the allowlist allows too."""

    def __init__(self, allowlist: list[str]):
        self.allowlist = allowlist

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        if not url_allowed(newurl, self.allowlist):
            raise forbidden(f"source URL {req.full_url!r} redirects to {newurl!r}, which does not start with "
                            f"any prefix of URL_ALLOWLIST {self.allowlist}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _UrlSource:
    """An http(s) URL read by a helper thread into a small bounded queue, so that the handler's
    thread never blocks on the network for longer than _POLL and sees a cancel at once."""

    def __init__(self, url: str, allowlist: list[str], limit: int | None):
        self.url = url
        self.what = f"source URL {url!r}"
        self._opener = urllib.request.build_opener(_AllowlistRedirects(allowlist))
        self._limit = limit  # read no further than this (the command's length), when given
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=_URL_QUEUE)
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._cancel: threading.Event | None = None

    def start(self, cancel: threading.Event) -> int | None:
        """Connect and read the headers; the body's length from Content-Length, None without one."""
        self._cancel = cancel
        self._thread = threading.Thread(target=self._read, name="upload-url-reader", daemon=True)
        self._thread.start()
        kind, value = self._next()
        assert kind == "length"
        return value  # type: ignore[return-value]

    def items(self, length: int | None, *, sparse: bool) -> Iterator[Item]:
        got = 0
        while True:
            kind, value = self._next()
            if kind == "eof":
                break
            assert isinstance(value, bytes)
            got += len(value)
            yield value
        if length is not None and got < length:
            raise OperationError(ErrorCode.unavailable, f"the {self.what} ended after {got} of the {length} "
                                                        f"bytes expected; the upload was aborted")

    def close(self) -> None:
        self._stop.set()
        sock = self._socket
        if sock is not None:  # wake a read that waits for the network
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _next(self) -> tuple[str, object]:
        while True:
            if self._cancel is not None and self._cancel.is_set():
                raise TransferCancelled()
            try:
                kind, value = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if kind == "error":
                raise _url_error(value, self.what)  # type: ignore[arg-type]
            return kind, value

    def _put(self, kind: str, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            request = urllib.request.Request(self.url, headers={"Accept-Encoding": "identity"})
            with self._opener.open(request, timeout=URL_TIMEOUT) as response:
                self._socket = _socket_of(response)
                header = response.headers.get("Content-Length")
                size = int(header) if header is not None and header.strip().isdigit() else None
                if not self._put("length", size):
                    return
                got = 0
                while not self._stop.is_set():
                    want = CHUNK if self._limit is None else min(CHUNK, self._limit - got)
                    if want <= 0:
                        break
                    buf = response.read(want)
                    if not buf:
                        break
                    got += len(buf)
                    if not self._put("data", buf):
                        return
                self._put("eof", got)
        except BaseException as exc:  # handed to the handler's thread, which raises it
            if not self._stop.is_set():
                self._put("error", exc)


def _socket_of(response: object) -> socket.socket | None:
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _url_error(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, OperationError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        code = ErrorCode.not_found if exc.code in (404, 410) else \
            ErrorCode.invalid if 400 <= exc.code < 500 else ErrorCode.unavailable
        return OperationError(code, f"the {what} answered HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return OperationError(ErrorCode.unavailable, f"cannot read the {what}: {exc.reason}")
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return OperationError(ErrorCode.unavailable, f"reading the {what} failed: {exc!r}")
    return exc


def _source_error(exc: OSError, what: str) -> OperationError:
    if exc.errno == errno.ENOENT:
        return not_found(f"{what} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OperationError(ErrorCode.forbidden, f"{what} cannot be read by the worker: {exc.strerror}")
    if exc.errno == errno.ELOOP:
        return invalid(f"{what} is a symbolic link that changed while it was checked")
    return OperationError(ErrorCode.unavailable, f"reading {what} failed: {exc.strerror or exc}")


# ---- volume.download ----------------------------------------------------------------------------

@handles(VOLUME_DOWNLOAD)
def download(ctx: Context, a: VolumeDownloadArgs) -> VolumeDownloaded:
    roots = ctx.settings.allowed_roots
    shown = a.destination.path
    dest = check_local_file(shown, roots, "download destination")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise invalid(f"the directory {parent!r} of download destination {shown!r} does not exist; create it first")
    if os.path.isdir(dest):
        raise invalid(f"download destination {shown!r} is a directory; name a file")
    if ctx.libvirt_is_local:
        _not_a_volume(ctx, dest, shown)

    pool = ctx.active_pool(a.pool)
    vol = ctx.volume(pool, a.name)
    where = f"volume {a.name!r} in pool {a.pool!r}"
    size = _physical(vol, vol.info()[1])
    if a.offset > size:
        raise invalid(f"offset {a.offset} is past the end of {where}, which holds {size} bytes")
    length = a.length if a.length is not None else size - a.offset
    if a.offset + length > size:
        raise invalid(f"the range of {length} bytes from offset {a.offset} ends at byte {a.offset + length}, "
                      f"past the end of {where}, which holds {size} bytes")

    fd, temporary = -1, None
    stream: libvirt.virStream | None = None
    received = data_bytes = 0
    try:
        fd, part = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(dest)[:100]}.", suffix=".part")
        temporary = part
        opened = _fd_path(fd)
        if opened is not None:
            check_local_file(opened, roots, "download destination")
        os.fchmod(fd, _mode_for(dest))
        ctx.progress.update(0, length)
        tick = _ticker(ctx, length)
        flags = libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM if a.sparse else 0
        while received < length:  # one stream per segment: see DOWNLOAD_SEGMENT
            segment = min(DOWNLOAD_SEGMENT, length - received)
            stream = ctx.conn.newStream(0)
            vol.download(stream, a.offset + received, segment, flags)
            got, data = streams.receive(stream, fd, sparse=a.sparse, tick=lambda p, base=received: tick(base + p))
            stream.finish()
            stream = None
            received += got
            data_bytes += data
            if got != segment:
                raise OperationError(ErrorCode.conflict, f"{where} ended after {received} of the {length} bytes "
                                                         f"asked for; did its size change during the download?")
        os.ftruncate(fd, length)  # a trailing hole is a seek past the end: give the file its length
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(part, dest)
        temporary = None
        _fsync_dir(parent)
    except TransferCancelled:
        raise OperationError(ErrorCode.cancelled,
                             f"volume.download of {where} cancelled by job.cancel after "
                             f"{_position(fd, received)} of {length} bytes; {shown!r} was left as it was") from None
    except OSError as exc:
        raise OperationError(ErrorCode.unavailable,
                             f"writing download destination {shown!r} failed: {exc.strerror or exc}") from None
    finally:
        streams.abort(stream)
        if fd >= 0:
            os.close(fd)
        if temporary is not None:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
    ctx.progress.update(length, length, final=True)
    return VolumeDownloaded(bytes=data_bytes, path=dest)


def _not_a_volume(ctx: Context, dest: str, shown: str) -> None:
    """A download must not replace a pool's volume file (that would swap the volume's inode under
    libvirt and under guests that have it open)."""
    if not os.path.lexists(dest):
        return
    try:
        volume = ctx.conn.storageVolLookupByPath(dest)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return
        raise
    raise forbidden(f"download destination {shown!r} is volume {volume.name()!r} of pool "
                    f"{volume.storagePoolLookupByVolume().name()!r}; volumes are written with volume.upload")


def _position(fd: int, fallback: int) -> int:
    try:
        return os.lseek(fd, 0, os.SEEK_CUR) if fd >= 0 else fallback
    except OSError:
        return fallback


def _mode_for(dest: str) -> int:
    """The mode the file gets: the one it replaces, or 0666 less the process umask."""
    try:
        return stat.S_IMODE(os.stat(dest).st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o600


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- shared -------------------------------------------------------------------------------------

def _ticker(ctx: Context, total: int) -> streams.Tick:
    """After every chunk: stop if job.cancel asked for it, and report progress (rate-limited)."""
    cancel, progress = ctx.cancel, ctx.progress

    def tick(position: int) -> None:
        if cancel.is_set():
            raise TransferCancelled()
        progress.update(position, total)

    return tick


def _physical(vol: libvirt.virStorageVol, fallback: int) -> int:
    """The bytes a volume's storage holds (its file's length), which is what a stream moves."""
    try:
        return vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            return fallback
        raise


def _fd_path(fd: int) -> str | None:
    """What an open descriptor really points at (Linux /proc), to check it after opening."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _after_change(ctx: Context, volume) -> None:  # noqa: ANN001
    inventory = getattr(ctx, "inventory", None)
    if inventory is not None:
        inventory.put_volume(volume)
    touch = getattr(ctx, "touch", None)
    if touch is not None:
        touch(volume.pool)
