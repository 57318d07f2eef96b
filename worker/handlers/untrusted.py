"""Untrusted images: what volume.upload wrote is looked at before anything can attach it.

Once the data is in the volume, the worker reads its first bytes back through libvirt (a download
stream: the same on a remote libvirt) and inspects them itself (worker/virt/image_header.py), so a
reference to another file is found before any program follows it. When libvirt runs on this
machine qemu-img looks too (`qemu-img info --output=json -U`, under prlimit — 1 GiB of address
space, 30 s of CPU — as OpenStack runs it on untrusted images); it knows every format qemu probes.

Refused: content qemu would read as another format than the volume's declared one (the driver
volume.attach writes for it: raw for raw, iso, none...), a backing file, an external data file, a
vmdk naming other files as extents, an image qemu-img cannot open. The upload then fails `invalid`
naming what was found, and the volume is put back so that none of it stays attachable: zeros where
qemu reads the volume as raw (libvirt's zero wipe, which keeps the file's length), else a new
empty volume of its declared format, capacity and backing store. An upload that failed or was
cancelled half-way is inspected the same way: its first bytes may be a dangerous header already.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass

import libvirt

from messages.events import EventType
from worker.errors import OperationError, invalid
from worker.handlers.context import Context
from worker.virt import disk_xml, streams, volume_xml
from worker.virt.describe import volume_object
from worker.virt.image_header import HEADER_BYTES, ImageHeader, inspect

log = logging.getLogger(__name__)

QEMU_IMG_INFO = ("prlimit", "--as=1073741824", "--cpu=30", "qemu-img", "info", "--output=json", "-U")
QEMU_IMG_TIMEOUT = 60.0


@dataclass(frozen=True)
class Before:
    """The volume before the upload: what it is declared to be, and what it takes to make it again."""

    name: str
    declared: str | None
    capacity: int
    backing_path: str | None
    backing_format: str | None

    @property
    def driver(self) -> str:
        return disk_xml.driver_type(self.declared)


def before(ctx: Context, pool_name: str, volume: libvirt.virStorageVol) -> Before:
    xml = volume.XMLDesc(0)
    described = volume_xml.read(pool_name, xml)
    backing_path, backing_format = volume_xml.backing_of(xml)
    return Before(name=described.name, declared=ctx.declared_format(described), capacity=described.capacity,
                  backing_path=backing_path, backing_format=backing_format)


def judge(was: Before, header: ImageHeader, qemu: dict | str | None, path: str) -> list[str]:
    """What makes the content unsafe to attach as a disk of the declared format, one sentence each.
    `qemu` is qemu-img's JSON, its error message, or None when it was not asked."""
    found = []
    declared = was.declared or "none"
    qemu_format = qemu.get("format") if isinstance(qemu, dict) else None
    if header.format != was.driver:
        found.append(f"its first bytes are a {header.format} image header, but the volume's declared format is "
                     f"{declared!r}")
    elif qemu_format is not None and qemu_format != was.driver:
        found.append(f"qemu-img reads it as a {qemu_format} image, but the volume's declared format is {declared!r}")
    specific = ((qemu.get("format-specific") or {}).get("data") or {}) if isinstance(qemu, dict) else {}
    backing = header.backing or (qemu.get("backing-filename") if isinstance(qemu, dict) else None)
    if backing:
        found.append(f"it names the backing file {backing!r}")
    data_file = specific.get("data-file")
    if header.data_file or data_file:
        found.append("it keeps its data in an external data file" + (f" {data_file!r}" if data_file else ""))
    extents = set(header.references) | {e.get("filename") for e in specific.get("extents", [])
                                         if e.get("filename") not in (None, path)}
    if extents:
        found.append(f"it names other files as its extents: {', '.join(repr(e) for e in sorted(extents))}")
    if isinstance(qemu, str):
        found.append(f"qemu-img cannot open it: {qemu}")
    return found


def check(ctx: Context, pool: libvirt.virStoragePool, volume: libvirt.virStorageVol, was: Before,
          where: str) -> None:
    """After an upload: raise `invalid` and put the volume back when what it holds is unsafe."""
    found = _inspect(ctx, volume, was)
    if found:
        made = _put_back(ctx, pool, volume, was)
        raise invalid(f"the data uploaded into {where} was refused: {'; '.join(found)}. The volume was {made}, so "
                      f"that nothing of it can be attached")


def put_back_if_unsafe(ctx: Context, pool: libvirt.virStoragePool, volume: libvirt.virStorageVol,
                       was: Before) -> None:
    """After an upload that failed or was cancelled: the same look, logged instead of raised (the
    upload's own error is the one the command reports)."""
    try:
        found = _inspect(ctx, volume, was)
        if found:
            made = _put_back(ctx, pool, volume, was)
            log.warning("an interrupted upload left an unsafe image; the volume was put back",
                        extra={"command_id": ctx.command.id, "volume": was.name, "found": found, "made": made})
    except (libvirt.libvirtError, OperationError, OSError) as error:
        log.error("could not look at what an interrupted upload left in the volume",
                  extra={"command_id": ctx.command.id, "volume": was.name, "error": str(error)})


def _inspect(ctx: Context, volume: libvirt.virStorageVol, was: Before) -> list[str]:
    physical = volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2] or volume.info()[2]
    header = inspect(_first_bytes(ctx, volume, min(HEADER_BYTES, physical)))
    path = volume.path()
    return judge(was, header, _qemu_img(path) if ctx.libvirt_is_local else None, path)


def _first_bytes(ctx: Context, volume: libvirt.virStorageVol, length: int) -> bytes:
    if length <= 0:
        return b""
    stream = ctx.conn.newStream(0)
    try:
        volume.download(stream, 0, length, 0)
        parts = []
        while True:
            data = stream.recv(streams.CHUNK)
            if not isinstance(data, bytes) or not data:
                break
            parts.append(data)
        stream.finish()
        stream = None
        return b"".join(parts)
    finally:
        streams.abort(stream)


def _qemu_img(path: str) -> dict | str | None:
    """qemu-img's JSON about the image, or the reason it gave for not opening it; None when qemu-img
    cannot be run here (the header inspection stands alone then)."""
    try:
        done = subprocess.run([*QEMU_IMG_INFO, path], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    except FileNotFoundError as error:
        log.warning("qemu-img or prlimit is missing: uploads are checked by their header only",
                    extra={"error": str(error)})
        return None
    except subprocess.TimeoutExpired:
        return f"it did not finish within {QEMU_IMG_TIMEOUT:g} s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    try:
        return json.loads(done.stdout)
    except ValueError:
        return f"its answer is not JSON: {done.stdout[:200]!r}"


def _put_back(ctx: Context, pool: libvirt.virStoragePool, volume: libvirt.virStorageVol, was: Before) -> str:
    """Make the volume hold nothing of the upload; returns what was done, for the message."""
    if was.driver == "raw":
        volume.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO, 0)
        made = "wiped back to zeros"
    else:
        volume.delete(0)
        xml = volume_xml.build(was.name, was.capacity, allocation=0, format=was.declared,
                               backing_path=was.backing_path, backing_format=was.backing_format)
        try:
            volume = pool.createXML(xml, 0)
        except libvirt.libvirtError as error:
            ctx.volume_event(EventType.volume_deleted, volume_xml.read(pool.name(), xml))
            return f"deleted, and making it again failed ({error.get_error_message()})"
        made = f"made again as an empty {was.declared} volume of {was.capacity} bytes"
    try:  # libvirt's view of the volume may be a probe of what was refused: look again
        pool.refresh(0)
    except libvirt.libvirtError as error:
        log.info("pool not refreshed after putting a volume back", extra={"error": str(error)})
    ctx.volume_event(EventType.volume_wiped, volume_object(pool.name(), pool.storageVolLookupByName(was.name)))
    return made
