"""volume.upload and volume.download: bytes between a volume and a worker-local file or an http(s) URL.

upload:   source{path} (under ALLOWED_ROOTS) or source{url} (under a URL_ALLOWLIST prefix)
          --> libvirt upload stream at `offset` --> the existing volume
download: the volume's range [offset, offset+length) --> libvirt download stream
          --> `.name.<random>.part` next to destination{path} --> os.replace onto the final name

Both move data in constant memory through worker/virt/streams.py (which also explains why holes
sent into a file volume need care), report storage.job.progress about once a second, and stop within
a chunk when job.cancel sets ctx.cancel: the stream is aborted and the command ends `cancelled`.
Everything is checked before a byte moves: policy (forbidden), the volume (not_found), sizes (invalid).
Sources are in worker/handlers/sources.py; a URL source without Content-Length is checked as it
streams and aborted once it passes the volume.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator

import libvirt

from messages.events import EventType
from messages.operations import VOLUME_DOWNLOAD, VOLUME_UPLOAD
from messages.payloads import VolumeDownloaded, VolumeUploaded
from messages.results import ErrorCode
from messages.volumes import VolumeDownloadArgs, VolumeUploadArgs
from worker.errors import OperationError, forbidden, invalid
from worker.handlers import space
from worker.handlers.context import Context
from worker.handlers.paths import check_local_file
from worker.handlers.procfs import fd_path, umask
from worker.handlers.registry import handles
from worker.handlers.sources import FileSource, UrlSource, open_source, source_error
from worker.virt import streams
from worker.virt.describe import volume_object
from worker.virt.streams import HoleGate, Item, Sender, TransferCancelled

log = logging.getLogger(__name__)

# A download asks libvirt for this much at a time. The libvirt client has no flow control: while the
# worker's libvirt event loop runs, it reads everything the daemon sends into memory, however slowly
# the destination is written (a 1 GiB download onto a busy disk peaked at 400 MiB RSS in one stream).
# Bounded segments bound that buffer.
DOWNLOAD_SEGMENT = 32 * 2**20


# ---- volume.upload ------------------------------------------------------------------------------

@handles(VOLUME_UPLOAD)
def upload(ctx: Context, a: VolumeUploadArgs) -> VolumeUploaded:
    source = open_source(a, ctx.settings)  # policy first: a forbidden source is refused before anything else
    try:
        return _upload(ctx, a, source)
    except TransferCancelled:  # while connecting to a URL source, before any byte moved
        raise OperationError(ErrorCode.cancelled, f"volume.upload into volume {a.name!r} in pool {a.pool!r} "
                                                  f"cancelled by job.cancel before any byte was written") from None
    finally:
        source.close()


def _upload(ctx: Context, a: VolumeUploadArgs, source: FileSource | UrlSource) -> VolumeUploaded:
    pool = ctx.active_pool(a.pool)
    ctx.require(pool, "upload", a.pool)
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
        needs = f"the upload into {where} needs {length if length is not None else 'an unknown number of'} bytes"
        with space.reported(pool, a.pool, needs):
            sender.put_all(items)
            sender.flush()
            stream.finish()
        stream = None
    except TransferCancelled:
        raise OperationError(ErrorCode.cancelled,
                             f"volume.upload into {where} cancelled by job.cancel after "
                             f"{sender.position if sender else 0} of {total or 'an unknown number of'} bytes") from None
    except OSError as exc:
        raise source_error(exc, source.what) from None
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
    ctx.require(pool, "download", a.pool)  # before anything is written: a LUN of iscsi-direct cannot be read
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
        opened = fd_path(fd)
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
    mask = umask()
    return 0o600 if mask is None else 0o666 & ~mask


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
