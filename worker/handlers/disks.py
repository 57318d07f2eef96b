"""volume.attach and volume.detach: a pool's volume as a guest disk, named by pool and volume.

The disk's driver type is the volume's declared format (worker/state/volume_records.py), never
what libvirt probed in its content: qemu then never probes either, and never follows a backing file
named by data a guest or an upload put into the volume.

Both act on two parts of a domain, each optional: the running domain (`live`, default: when it
runs) and its persistent definition (`config`, default true). Each part is looked at in its own
XML (the live XML for live, the inactive XML for config) and only the parts that differ are
changed, so a repeat converges and a half-done attach (config done, live not) is completed.

attach: the target already holding the same volume -> changed=false; holding something else, or the
volume already attached under another target -> conflict naming what is there.

detach: a target found in none of the asked-for parts -> succeeded, changed=false, with empty
`pool` and `name` (nothing was found to name). Otherwise `pool`/`name` are those of the disk found
(the live one first): a `type='volume'` disk names them itself, a file or block disk is looked up
by path among the pools' volumes (empty strings when it is no pool's volume).

Live detach is asynchronous: qemu asks the guest to release the device (ACPI eject for a PCI
disk) and libvirt removes it only when the guest has done so; a guest without an OS never does. The
request is sent with virDomainDetachDeviceAlias (documented as asynchronous; detachDeviceFlags
would block for libvirt's own 5 s and then report success with the disk still there), then the
handler waits up to LIVE_DETACH_TIMEOUT seconds for VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, checking
the live XML as well so that a missed event costs at most a poll interval. When the time passes,
the command fails with `timeout` and says that the request stays pending in the guest and whether
the definition was changed (config is done first, so it is). SCSI and USB disks are removed by
qemu at once, without the guest.

Events: storage.volume.attached/detached with data.disk = {domain, target}, only when a disk was
actually added or removed and its storage is a pool volume (the event carries a volume object);
a detach that timed out sends none: the guest still has the disk.
"""

from __future__ import annotations

import logging
import threading
import time

import libvirt

from messages.events import DiskRef, EventType
from messages.objects import VolumeObject
from messages.operations import VOLUME_ATTACH, VOLUME_DETACH
from messages.payloads import DiskChange
from messages.results import ErrorCode
from messages.volumes import VolumeAttachArgs, VolumeDetachArgs
from worker.errors import OperationError, conflict, invalid, not_found
from worker.handlers.context import Context
from worker.handlers.registry import handles
from worker.virt import disk_xml
from worker.virt.describe import volume_object

log = logging.getLogger(__name__)

# Seconds a live detach waits for the guest to release the disk (module constants, so tests can
# shorten them; the contract has no argument for it).
LIVE_DETACH_TIMEOUT = 20.0
# Seconds between looks at the live XML while waiting (the device-removed event ends a wait early).
LIVE_DETACH_POLL = 0.5

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG

_WHERE = {LIVE: "the running domain", CONFIG: "the domain's persistent definition"}


@handles(VOLUME_ATTACH)
def attach(ctx: Context, a: VolumeAttachArgs) -> DiskChange:
    dom = _domain(ctx, a.domain)
    live, config = _parts(dom, a.domain, a.live, a.config, "attach")
    pool = ctx.active_pool(a.pool)
    ctx.require(pool, "attach", a.pool)
    volume = volume_object(a.pool, ctx.volume(pool, a.name))
    bus = a.bus or disk_xml.default_bus(a.target)
    flags = 0
    for part, wanted in ((LIVE, live), (CONFIG, config)):
        if wanted and not _attached_in(_xml(dom, part), part, a, volume):
            flags |= part
    if flags:
        xml = disk_xml.build(pool=a.pool, volume=a.name, target=a.target, bus=bus,
                             driver=disk_xml.driver_type(ctx.declared_format(volume)), readonly=a.readonly)
        dom.attachDeviceFlags(xml, flags)
        ctx.changed = True
        ctx.volume_event(EventType.volume_attached, volume, DiskRef(domain=a.domain, target=a.target))
    return DiskChange(domain=a.domain, target=a.target, pool=a.pool, name=a.name, changed=ctx.changed)


def _attached_in(xml: str, part: int, a: VolumeAttachArgs, volume: VolumeObject) -> bool:
    """True when this part already has the volume at the target; conflict when it has something
    else there, or has the volume under another target."""
    where = _WHERE[part]
    held = disk_xml.find(xml, a.target)
    if held is not None:
        if not held.holds(a.pool, a.name, volume.path):
            raise conflict(f"target {a.target} of domain {a.domain!r} already holds {held.describe()} in {where}; "
                           f"detach it first or choose another target")
        found = []
        if held.readonly != a.readonly:
            found.append(f"it is {_rw(held.readonly)}, the command asks for {_rw(a.readonly)}")
        if a.bus is not None and held.bus != a.bus:
            found.append(f"its bus is {held.bus!r}, the command asks for {a.bus!r}")
        if found:
            raise conflict(f"volume {a.name!r} of pool {a.pool!r} is already attached to domain {a.domain!r} "
                           f"as {a.target} in {where} and differs: {'; '.join(found)}")
        return True
    elsewhere = [d.target for d in disk_xml.find_holding(xml, a.pool, a.name, volume.path)]
    if elsewhere:
        raise conflict(f"volume {a.name!r} of pool {a.pool!r} is already attached to domain {a.domain!r} as "
                       f"{', '.join(elsewhere)} in {where}; detach it there first to attach it as {a.target}")
    return False


def _rw(readonly: bool) -> str:
    return "read-only" if readonly else "writable"


@handles(VOLUME_DETACH)
def detach(ctx: Context, a: VolumeDetachArgs) -> DiskChange:
    dom = _domain(ctx, a.domain)
    live, config = _parts(dom, a.domain, a.live, a.config, "detach")
    live_disk = disk_xml.find(_xml(dom, LIVE), a.target) if live else None
    config_disk = disk_xml.find(_xml(dom, CONFIG), a.target) if config else None
    found = live_disk or config_disk
    if found is None:
        return DiskChange(domain=a.domain, target=a.target, pool="", name="", changed=ctx.changed)
    pool, name, last = _storage_of(ctx, found)
    if config_disk is not None:
        dom.detachDeviceFlags(config_disk.xml, CONFIG)
        ctx.changed = True
    if live_disk is not None:
        outcome = _detach_live(ctx, dom, live_disk)
        if outcome != "removed":
            raise _not_released(a, outcome, config, config_disk is not None)
        ctx.changed = True
    if last is not None:
        ctx.volume_event(EventType.volume_detached, last, DiskRef(domain=a.domain, target=a.target))
    else:
        log.info("detached a disk that is no pool's volume: no volume event",
                 extra={"domain": a.domain, "target": a.target, "source": found.describe()})
    return DiskChange(domain=a.domain, target=a.target, pool=pool, name=name, changed=ctx.changed)


def _detach_live(ctx: Context, dom: libvirt.virDomain, disk: disk_xml.Disk) -> str:
    """Ask the running domain to let the disk go and wait for it: "removed", "refused" (the guest
    said no) or "timeout"."""
    conn = ctx.conn
    settled = threading.Event()
    refused: list[str] = []

    # Both run on libvirt's event-loop thread: they only record and wake the waiting thread.
    def removed(_conn, _dom, alias, _opaque) -> None:
        if alias == disk.alias:
            settled.set()

    def removal_failed(_conn, _dom, alias, _opaque) -> None:
        if alias == disk.alias:
            refused.append(alias)
            settled.set()

    callbacks: list[int] = []
    try:
        callbacks.append(conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, removed, None))
        callbacks.append(conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                                                     removal_failed, None))
        if disk.alias:
            dom.detachDeviceAlias(disk.alias, LIVE)
        else:  # qemu always names devices; this is for a driver that does not
            dom.detachDeviceFlags(disk.xml, LIVE)
        deadline = time.monotonic() + LIVE_DETACH_TIMEOUT
        while True:
            if not _in_running_domain(dom, disk.target):
                return "removed"
            if refused:
                return "refused"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if settled.wait(min(LIVE_DETACH_POLL, left)):
                settled.clear()
    finally:
        for callback in callbacks:
            try:
                conn.domainEventDeregisterAny(callback)
            except libvirt.libvirtError:
                pass


def _in_running_domain(dom: libvirt.virDomain, target: str) -> bool:
    xml = dom.XMLDesc(0)
    if not dom.isActive():  # stopped meanwhile: the running domain, and its disk, are gone
        return False
    return disk_xml.find(xml, target) is not None


def _not_released(a: VolumeDetachArgs, outcome: str, config: bool, config_had_it: bool) -> OperationError:
    if not config:
        definition = "the persistent definition was not changed (config=false)"
    elif config_had_it:
        definition = "the disk was removed from the domain's persistent definition"
    else:
        definition = "the persistent definition did not have the disk"
    if outcome == "refused":
        return OperationError(ErrorCode.busy,
                              f"the guest of domain {a.domain!r} refused to release {a.target} (libvirt reported "
                              f"the device removal failed); it stays attached to the running domain; {definition}")
    return OperationError(ErrorCode.timeout,
                          f"the guest of domain {a.domain!r} did not release {a.target} within "
                          f"{LIVE_DETACH_TIMEOUT:g} s: the detach request remains pending in the guest (it must "
                          f"answer the ACPI eject; a guest without a running OS never does) and the disk stays "
                          f"attached to the running domain until it does; {definition}")


def _storage_of(ctx: Context, disk: disk_xml.Disk) -> tuple[str, str, VolumeObject | None]:
    """(pool, volume name, volume object) of the disk's storage, read before it is detached;
    ("", "", None) when it is no pool's volume, a None object when the volume is gone."""
    if disk.type == "volume" and disk.pool and disk.volume:
        pool = ctx.find_pool(disk.pool)
        volume = ctx.find_volume(pool, disk.volume) if pool is not None and pool.isActive() else None
        return disk.pool, disk.volume, volume_object(disk.pool, volume) if volume is not None else None
    if disk.type in ("file", "block") and disk.path:
        try:
            volume = ctx.conn.storageVolLookupByPath(disk.path)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return "", "", None
            raise
        pool_name = volume.storagePoolLookupByVolume().name()
        return pool_name, volume.name(), volume_object(pool_name, volume)
    return "", "", None


def _domain(ctx: Context, name: str) -> libvirt.virDomain:
    try:
        return ctx.conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise not_found(f"domain {name!r} does not exist on host {ctx.settings.host_id}") from None
        raise


def _parts(dom: libvirt.virDomain, name: str, live: bool | None, config: bool, verb: str) -> tuple[bool, bool]:
    """Which parts to change: (live, config), with live defaulting to whether the domain runs."""
    running = bool(dom.isActive())
    if live is None:
        live = running
    elif live and not running:
        raise invalid(f"domain {name!r} is not running, so live=true cannot {verb} a disk on it; "
                      f"send live=false to change only its definition, or start the domain first")
    if config and not dom.isPersistent():
        raise invalid(f"domain {name!r} is transient: it has no persistent definition for config=true; "
                      f"send config=false to {verb} the disk on the running domain only")
    if not live and not config:
        raise invalid(f"nothing to {verb}: live and config are both false for domain {name!r} "
                      f"({'running' if running else 'not running'})")
    return live, config


def _xml(dom: libvirt.virDomain, part: int) -> str:
    return dom.XMLDesc(0 if part == LIVE else libvirt.VIR_DOMAIN_XML_INACTIVE)
