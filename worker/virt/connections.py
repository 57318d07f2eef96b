"""Opening and closing libvirt connections, and telling whether one is alive."""

from __future__ import annotations

import logging
import threading

import libvirt

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.errors import details
from worker.virt.event_loop import ensure_event_loop

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3


def open_connection(uri: str) -> libvirt.virConnect:
    """A new connection with keepalive (a libvirtd that stops answering is noticed). libvirt's open
    has no timeout: only the gateway's opener thread calls this."""
    ensure_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise OperationError(ErrorCode.unavailable,
                             f"cannot connect to libvirt at {uri}: {details(exc).message}",
                             retryable=True, libvirt=details(exc)) from None
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    except libvirt.libvirtError:
        log.debug("keepalive not supported by %s", uri)
    return conn


def close_in_background(conns: list[libvirt.virConnect], main: libvirt.virConnect | None = None) -> threading.Thread:
    """Close connections on a thread of its own (returned): closing asks libvirtd, which may not
    answer. `main` loses its close callback first."""

    def close_all() -> None:
        if main is not None:
            try:
                main.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
        for conn in [*conns, *([] if main is None else [main])]:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    closer = threading.Thread(target=close_all, name="libvirt-close", daemon=True)
    closer.start()
    return closer


def alive(conn: libvirt.virConnect | None) -> bool:
    if conn is None:
        return False
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
