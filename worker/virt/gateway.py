"""The libvirt connection: opened lazily, kept alive, re-opened after it is lost.

libvirt connections are thread-safe, so every executor thread shares one. The event loop that
keepalive, the close callback and (later) pool lifecycle callbacks need runs on its own thread,
registered once per process before the first connection opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import libvirt

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.describe import pool_type
from worker.virt.errors import details
from worker.virt.event_loop import run_forever
from worker.virt.handles import VolumeHandles

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

_event_loop_lock = threading.Lock()
_event_loop_started = False
_event_loop_thread: threading.Thread | None = None


def _silence_default_error_printing() -> None:
    # libvirt prints every error to stderr unless a handler is registered; errors reach us as exceptions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread, once per process."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        _silence_default_error_printing()
        libvirt.virEventRegisterDefaultImpl()

        global _event_loop_thread
        _event_loop_thread = threading.Thread(target=run_forever, name="libvirt-events", daemon=True)
        _event_loop_thread.start()
        _event_loop_started = True


def event_loop_thread() -> threading.Thread | None:
    return _event_loop_thread


RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0


class LibvirtGateway:
    """Hands out the live connection; `on_connect` runs for every newly opened connection and
    `on_disconnect` once for every connection found lost. After a loss a background thread
    re-opens the connection with backoff, so callbacks come back even when no command asks."""

    def __init__(self, uri: str, *, on_connect: Callable[[libvirt.virConnect], None] | None = None,
                 on_disconnect: Callable[[str], None] | None = None):
        self.uri = uri
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._closed = False
        self._connected = threading.Event()
        self._reconnecting = False
        self._wake = threading.Event()
        self._pools: dict[str, libvirt.virStoragePool] = {}
        self.volumes = VolumeHandles()
        self._pool_types: dict[str, str] = {}

    def pool(self, name: str) -> libvirt.virStoragePool | None:
        """The pool named `name`, or None. Handles are kept per connection: a pool is looked up by
        name once, not once per command. `forget_pools` drops them when pools are (re)defined or a
        handle turns out stale."""
        conn = self.connection()
        handle = self._pools.get(name)
        if handle is not None and handle.connect() is conn:
            return handle
        try:
            handle = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise
        self._pools[name] = handle
        return handle

    def pool_type(self, pool: libvirt.virStoragePool) -> str:
        """The pool's type ("dir", "logical"...), read from its XML once per pool uuid (the uuid is
        in the handle: no round trip) and forgotten with the pool handles."""
        uuid = pool.UUIDString()
        kind = self._pool_types.get(uuid)
        if kind is None:
            kind = self._pool_types[uuid] = pool_type(pool)
        return kind

    def forget_pools(self, name: str | None = None) -> None:
        self._pool_types.clear()
        if name is None:
            self._pools.clear()
            self.volumes.clear()
        else:
            self._pools.pop(name, None)
            self.volumes.forget(name)

    def start(self) -> None:
        """Connect now, in the background, retrying until libvirt answers."""
        self._reconnect_in_background()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connection(self) -> libvirt.virConnect:
        """The open connection, opening one when there is none; raises OperationError(unavailable)."""
        conn = self._conn
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise OperationError(ErrorCode.unavailable, "the worker is shutting down", retryable=False)
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def is_alive(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def invalidate(self, reason: str) -> None:
        """Forget the current connection if it is dead, so that the next call opens a new one."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                alive = conn.isAlive()
            except libvirt.libvirtError:
                alive = False
            if alive:
                return
            self._drop(conn, reason)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connected.clear()
            self._wake.set()
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise OperationError(ErrorCode.unavailable,
                                 f"cannot connect to libvirt at {self.uri}: {details(exc).message}",
                                 retryable=True, libvirt=details(exc)) from None
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            log.debug("keepalive not supported by %s", self.uri)
        conn.registerCloseCallback(self._closed_by_libvirt, None)
        log.info("connected to libvirt", extra={"uri": self.uri})
        if self._on_connect is not None:
            self._on_connect(conn)
        self._connected.set()
        return conn

    def _closed_by_libvirt(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Runs on the libvirt event thread while libvirt holds the connection's close-callback lock:
        # taking our lock here could deadlock against a thread that holds it and calls into libvirt,
        # so the bookkeeping happens on a short-lived thread.
        names = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error", libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
                 libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
                 libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by client"}
        text = names.get(reason, f"reason {reason}")
        threading.Thread(target=self._forget, args=(conn, text), name="libvirt-closed", daemon=True).start()

    def _forget(self, conn: libvirt.virConnect, reason: str) -> None:
        with self._lock:
            if self._conn is conn:
                self._drop(conn, reason)

    def _drop(self, conn: libvirt.virConnect, reason: str) -> None:
        """Under the lock: forget a dead connection and start re-opening one."""
        self._conn = None
        self._pools.clear()
        self._pool_types.clear()
        self.volumes.clear()
        self._connected.clear()
        log.warning("lost the connection to libvirt", extra={"uri": self.uri, "reason": reason})
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        if self._on_disconnect is not None:
            self._on_disconnect(reason)
        self._reconnect_in_background(locked=True)

    def _reconnect_in_background(self, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._reconnect_in_background(locked=True)
            return
        if self._reconnecting or self._closed:
            return
        self._reconnecting = True
        threading.Thread(target=self._reconnect_loop, name="libvirt-reconnect", daemon=True).start()

    def _reconnect_loop(self) -> None:
        delay = RECONNECT_MIN
        try:
            while not self._closed:
                try:
                    self.connection()
                    return
                except OperationError as error:
                    log.info("libvirt not reachable yet", extra={"uri": self.uri, "error": error.message,
                                                                 "retry_in_s": delay})
                if self._wake.wait(delay):
                    return
                delay = min(delay * 2, RECONNECT_MAX)
        finally:
            with self._lock:
                self._reconnecting = False
