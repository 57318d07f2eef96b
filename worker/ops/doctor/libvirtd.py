"""Whether libvirtd answers on the worker's URI and which storage pool types it supports.

(Named after the daemon, not `libvirt`, so that it does not read as the binding it imports.)"""

from __future__ import annotations

import threading
from typing import Any

from worker.ops.doctor.context import Context
from worker.ops.doctor.report import START_SERVICES, Check, fail, ok, skip, warn

LIBVIRT_TIMEOUT = 15.0


def _open_libvirt(uri: str, timeout: float):
    """libvirt.open on a helper thread, so an unanswering remote URI cannot hang the doctor."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["conn"] = libvirt.open(uri)
        except libvirt.libvirtError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="doctor-libvirt", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["conn"]


def libvirt_fix(uri: str, message: str) -> str:
    """The fix for a failed connection, guessed from libvirt's error message."""
    lowered = message.lower()
    if "no such file or directory" in lowered or "connection refused" in lowered:
        return (f"start libvirtd ({START_SERVICES}; or install libvirt-daemon-system and run libvirtd -d), or "
                f"set STORAGE_WORKER_LIBVIRT_URI")
    if "permission denied" in lowered or "authentication" in lowered or "access denied" in lowered \
            or "polkit" in lowered:
        return ("run the worker as root or as a member of the libvirt group (the socket "
                "/var/run/libvirt/libvirt-sock must be writable), or fix the URI's credentials")
    if "no connection driver" in lowered or "driver" in lowered and "not" in lowered:
        return f"install the libvirt driver for {uri!r} (e.g. libvirt-daemon-system), or fix STORAGE_WORKER_LIBVIRT_URI"
    return f"check that libvirtd runs ({START_SERVICES}) and that STORAGE_WORKER_LIBVIRT_URI is right"


def check_libvirt(ctx: Context) -> Check:
    name = "libvirt"
    uri = ctx.settings.libvirt_uri
    try:
        import libvirt
    except ImportError as error:
        return fail(name, f"libvirt-python cannot be imported: {error}",
                    "install libvirt-dev and pkg-config, then reinstall the project (pip install -e .)")
    from worker.virt.describe import libvirt_version

    try:
        conn = _open_libvirt(uri, LIBVIRT_TIMEOUT)
    except TimeoutError as error:
        return fail(name, f"{uri}: {error}", libvirt_fix(uri, ""))
    except libvirt.libvirtError as error:
        message = error.get_error_message() or str(error)
        return fail(name, f"{uri}: cannot connect: {message}", libvirt_fix(uri, message))
    ctx.libvirt = conn
    ctx.cleanups.append(conn.close)
    try:
        daemon = libvirt_version(conn.getLibVersion())
        driver = conn.getType()
        hypervisor = conn.getVersion()
    except libvirt.libvirtError as error:
        return warn(name, f"{uri}: connected, but cannot read versions: {error.get_error_message()}")
    hv = f", {driver} {libvirt_version(hypervisor)}" if hypervisor else f", driver {driver}"
    return ok(name, f"{uri} connected (libvirt {daemon}{hv}; client library "
                    f"{libvirt_version(libvirt.getVersion())})")


def check_pool_types(ctx: Context) -> Check:
    name = "pool_types"
    if ctx.libvirt is None:
        return skip(name, "not checked: libvirt is unreachable")
    import libvirt

    from worker.virt.describe import supported_pool_types

    try:
        types = supported_pool_types(ctx.libvirt)
    except libvirt.libvirtError as error:
        return warn(name, f"the storage pool capabilities cannot be read: {error.get_error_message()}",
                    "libvirt 5.2 or newer reports them (virConnectGetStoragePoolCapabilities)")
    if not types:
        return warn(name, "libvirt reports no supported storage pool type",
                    "install libvirt's storage drivers (libvirt-daemon-driver-storage*) and restart libvirtd")
    if "dir" not in types:
        return warn(name, f"supported: {', '.join(types)}; 'dir' is missing, so directory pools cannot be used",
                    "install libvirt-daemon-driver-storage (Debian: part of libvirt-daemon-system) and "
                    "restart libvirtd")
    return ok(name, f"supported: {', '.join(types)}")
