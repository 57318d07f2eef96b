"""volume.download: the volume's range [offset, offset+length) --> libvirt download stream
--> `.name.<random>.part` next to destination{path} --> os.replace onto the final name.

Data moves in constant memory through worker/virt/streams.py, progress is reported about once a
second, and job.cancel stops it within a chunk (the stream is aborted, the partial file removed,
the command ends `cancelled`). Everything is checked before a byte moves: policy (forbidden), the
volume (not_found), sizes (invalid).
"""

from __future__ import annotations

import os
import stat
import tempfile

import libvirt

from messages.operations import VOLUME_DOWNLOAD
from messages.payloads import VolumeDownloaded
from messages.results import ErrorCode
from messages.volumes import VolumeDownloadArgs
from worker.errors import OperationError, forbidden, invalid
from worker.handlers.context import Context
from worker.handlers.paths import check_local_file
from worker.handlers.procfs import fd_path, umask
from worker.handlers.progress import ticker
from worker.handlers.registry import handles
from worker.virt import streams
from worker.virt.describe import physical_length
from worker.virt.streams import TransferCancelled

# A download asks libvirt for this much at a time. The libvirt client has no flow control: while the
# worker's libvirt event loop runs, it reads everything the daemon sends into memory, however slowly
# the destination is written (a 1 GiB download onto a busy disk peaked at 400 MiB RSS in one stream).
# Bounded segments bound that buffer.
DOWNLOAD_SEGMENT = 32 * 2**20


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
    size = physical_length(vol, vol.info()[1])
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
        tick = ticker(ctx.cancel, ctx.progress, length)
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
