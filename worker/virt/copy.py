"""A volume's storage copied into another volume through libvirt streams, by the worker.

    source --download stream, SEGMENT at a time--> worker --one upload stream--> target, offset 0

libvirt's own clone (virStorageVolCreateXMLFrom) is one call that reports nothing and cannot be
stopped once started. This copy is the worker's: it counts every byte, stops within a chunk when
`tick` raises (job.cancel), and works the same on a remote libvirt. Both streams are sparse: the
source's holes travel as holes, and so do all-zero blocks of its data.

A download is asked for SEGMENT bytes at a time because libvirt's client reads whatever the daemon
sends into memory (worker/handlers/downloads.py): a bounded segment bounds the worker's memory. The
target receives one upload stream for the whole length. A hole sent into a file volume keeps what
the file held in its range and cuts the file at its end (worker/virt/streams.py), so holes go
through a HoleGate that knows where the new target holds data: nowhere in a fresh volume with no
allocation (raw), only in its first `target_length` bytes otherwise (the metadata qemu-img wrote
into a fresh qcow2, which the source's own bytes overwrite).
"""

from __future__ import annotations

import libvirt

from worker.virt import streams
from worker.virt.streams import HoleGate, Sender, Tick

SEGMENT = 32 * 2**20


def copy_storage(conn: libvirt.virConnect, source: libvirt.virStorageVol, target: libvirt.virStorageVol,
                 length: int, *, target_length: int, target_allocation: int, tick: Tick) -> int:
    """Copy the first `length` bytes of the source's storage over the target's, from offset 0;
    `target_length`/`target_allocation`: the target's file length and allocation before. Returns
    the data bytes sent (holes excluded)."""

    def empty(lo: int, hi: int) -> bool:
        return target_allocation == 0 or lo >= target_length

    gate = HoleGate(offset=0, size=target_length, end=length, empty=empty)
    upload: libvirt.virStream | None = conn.newStream(0)
    download: libvirt.virStream | None = None
    try:
        sender = Sender(upload, gate=gate, detect_zeros=True, tick=tick)
        target.upload(upload, 0, length, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        done = 0
        while done < length:
            segment = min(SEGMENT, length - done)
            download = conn.newStream(0)
            source.download(download, done, segment, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            sender.put_all(streams.received(download, sparse=True))
            download.finish()
            download = None
            if sender.position != done + segment:
                raise libvirt.libvirtError(f"the source sent {sender.position - done} bytes of a segment of "
                                           f"{segment} at offset {done}; did its size change during the copy?")
            done += segment
        sender.flush()
        upload.finish()
        upload = None
        return sender.data_bytes
    finally:
        streams.abort(download)
        streams.abort(upload)
