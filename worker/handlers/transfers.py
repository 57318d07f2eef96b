"""volume.upload: bytes from a worker-local file or an http(s) URL into a volume.

upload:   source{path} (under ALLOWED_ROOTS) or source{url} (under a URL_ALLOWLIST prefix)
          --> libvirt upload stream at `offset` --> the existing volume
          --> what was written is inspected before anything can attach it (worker/handlers/untrusted.py)

volume.download is in worker/handlers/downloads.py. Both move data in constant memory through worker/virt/streams.py (which also explains why holes
sent into a file volume need care), report storage.job.progress about once a second, and stop within
a chunk when job.cancel sets ctx.cancel: the stream is aborted and the command ends `cancelled`.
Everything is checked before a byte moves: policy (forbidden), the volume (not_found), sizes (invalid).
Sources are in worker/handlers/sources.py; a URL source without Content-Length is checked as it
streams and aborted once it passes the volume.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import libvirt

from messages.events import EventType
from messages.operations import VOLUME_UPLOAD
from messages.payloads import VolumeUploaded
from messages.results import ErrorCode
from messages.volumes import VolumeUploadArgs
from worker.errors import OperationError, invalid
from worker.handlers import in_use, space, untrusted
from worker.handlers.context import Context
from worker.handlers.in_use import refuse_if_in_use
from worker.handlers.progress import ticker
from worker.handlers.registry import handles
from worker.handlers.sources import FileSource, UrlSource, open_source, source_error
from worker.virt import streams
from worker.virt.describe import physical_length, volume_object
from worker.virt.streams import HoleGate, Item, Sender, TransferCancelled

log = logging.getLogger(__name__)



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
    length_before = ctx.memo.setdefault("upload.volume_length", physical_length(vol, capacity))
    where = f"volume {a.name!r} in pool {a.pool!r}"
    if a.offset > capacity:
        raise invalid(f"offset {a.offset} is past the end of {where} (capacity {capacity} bytes)")
    users = refuse_if_in_use(ctx, in_use.OVERWRITE, a.pool, a.name, vol.path(), force=a.force)
    if "upload.before" not in ctx.memo:  # what the volume was declared as, before any try wrote to it
        ctx.memo["upload.before"] = untrusted.before(ctx, a.pool, vol)
    was = ctx.memo["upload.before"]

    size = source.start(ctx.cancel)  # None: a URL without Content-Length
    if a.length is not None and size is not None and a.length > size:
        raise invalid(f"length {a.length} is larger than the {source.what}, which has {size} bytes")
    length = a.length if a.length is not None else size
    if length is not None and a.offset + length > capacity:
        raise invalid(f"the {source.what} does not fit: {length} bytes written at offset {a.offset} would end "
                      f"at byte {a.offset + length}, past the capacity of {where} ({capacity} bytes); "
                      f"nothing was written")
    if length == 0:
        unchanged = volume_object(a.pool, vol).model_copy(update={"in_use_by": users})
        return VolumeUploaded(**unchanged.model_dump(), changed=ctx.changed, bytes=0)

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
        sender = Sender(stream, gate=gate, detect_zeros=a.sparse, tick=ticker(ctx.cancel, ctx.progress, total))
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
            untrusted.put_back_if_unsafe(ctx, pool, vol, was)
    _restore_length(ctx, vol, vol_type, length_before, best_effort=False)
    untrusted.check(ctx, pool, vol, was, where)

    done = sender.position
    ctx.progress.update(done, length or done, final=True)
    uploaded = volume_object(a.pool, vol).model_copy(update={"in_use_by": users})
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
        if physical_length(vol, length) >= length:
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
