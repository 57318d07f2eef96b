"""The libvirt connections: opened in the background, kept alive, re-opened after they are lost.

The *main* connection carries the pool lifecycle callbacks and the close callback that tells the
worker libvirt is gone; while it is down, commands wait (`connected`). Every thread that makes
calls (the executors, the monitor) gets a connection of its own: one of the spares opened together
with the main one; all are replaced after the main one is lost.

Only the opener thread ever calls `libvirt.open`. An open has no timeout: against a libvirtd that
is alive but answers nothing (stopped, hung on storage) it never returns, and keepalive only
guards a connection once it is open. A thread whose own connection died while the main one still
looks alive (each connection's keepalive notices the silence on its own schedule) asks the opener
for a new one and waits at most OPEN_WAIT seconds; past that it is told `unavailable` and its
command ends through the retry budget instead of hanging with its thread. A libvirt
connection is thread-safe, but threads sharing one queue behind each other in its client:
measured with 8 threads reading one volume, 70-90 us of CPU and 100-120 us per call on a shared
connection, 30 us and 58 us with one each.

The event loop that keepalive, the close callback and the pool callbacks need runs on its own thread,
registered once per process before the first connection opens.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.describe import pool_type
from worker.virt.connections import alive, close_in_background, open_connection
from worker.virt.handles import VolumeHandles

log = logging.getLogger(__name__)

RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0
CLOSE_PATIENCE = 5.0  # seconds close() waits for libvirtd to acknowledge
# Seconds a thread waits for the opener to hand it a new connection. A healthy libvirtd opens one in
# milliseconds; a silent one is found out by the main connection's keepalive within about 20 s
# (worker/virt/connections.py).
OPEN_WAIT = 10.0


@dataclass(eq=False)
class _Session:
    """One thread's connection, with the handles looked up on it."""

    conn: libvirt.virConnect
    epoch: int  # of the main connection it was opened under
    pools: dict[str, libvirt.virStoragePool] = field(default_factory=dict)
    volumes: VolumeHandles = field(default_factory=VolumeHandles)


class LibvirtGateway:
    """Hands out the calling thread's live connection; `on_connect` runs for every newly opened main
    connection and `on_disconnect` once for every main connection found lost. After a loss a
    background thread re-opens the main connection with backoff, so callbacks come back even when
    no command asks."""

    def __init__(self, uri: str, *, on_connect: Callable[[libvirt.virConnect], None] | None = None,
                 on_disconnect: Callable[[str], None] | None = None, spares: int = 0):
        """`spares`: connections opened with each main connection for threads to take as their own
        (one per thread that will call libvirt), so that no such thread has to open one later."""
        self.uri = uri
        self._spare_count = spares
        self._spares: list[libvirt.virConnect] = []
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._lock = threading.Lock()
        # Wakes the opener (the main connection is lost, a thread waits for a connection, closing)
        # and the threads waiting for a connection it opened.
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting for the opener to hand them a connection
        self._opener: threading.Thread | None = None
        self._conn: libvirt.virConnect | None = None
        self._closed = False
        self._connected = threading.Event()
        self._epoch = 0  # counts main connections lost: sessions of an older epoch are replaced
        self._local = threading.local()
        # Every live thread's session, for forget_pools and close; a thread that ends takes its
        # session (and connection) with it.
        self._sessions: weakref.WeakSet[_Session] = weakref.WeakSet()
        self._pool_types: dict[str, str] = {}

    def pool(self, name: str) -> libvirt.virStoragePool | None:
        """The pool named `name`, or None. Handles are kept per connection: a pool is looked up by
        name once, not once per command. `forget_pools` drops them when pools are (re)defined or a
        handle turns out stale."""
        session = self._session()
        handle = session.pools.get(name)
        if handle is not None:
            return handle
        try:
            handle = session.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise
        session.pools[name] = handle
        return handle

    @property
    def volumes(self) -> VolumeHandles:
        """The volume handles kept on the calling thread's connection (worker.virt.handles)."""
        return self._session().volumes

    def pool_type(self, pool: libvirt.virStoragePool) -> str:
        """The pool's type ("dir", "logical"...), read from its XML once per pool uuid (the uuid is
        in the handle: no round trip) and forgotten with the pool handles."""
        uuid = pool.UUIDString()
        kind = self._pool_types.get(uuid)
        if kind is None:
            kind = self._pool_types[uuid] = pool_type(pool)
        return kind

    def forget_pools(self, name: str | None = None) -> None:
        """Drop kept pool (and volume) handles on every thread's connection: all of them, or one
        pool's."""
        with self._lock:
            self._pool_types.clear()
            sessions = list(self._sessions)
        for session in sessions:
            if name is None:
                session.pools.clear()
                session.volumes.clear()
            else:
                session.pools.pop(name, None)
                session.volumes.forget(name)

    def start(self) -> None:
        """Connect now, in the background, retrying until libvirt answers."""
        with self._lock:
            if self._opener is None and not self._closed:
                self._opener = threading.Thread(target=self._open_loop, name="libvirt-opener", daemon=True)
                self._opener.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return [] if self._opener is None else [self._opener]

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connection(self) -> libvirt.virConnect:
        """The calling thread's open connection, taking a spare when it has none; raises
        OperationError(unavailable) while there is no main connection, or when no connection could
        be had within OPEN_WAIT."""
        return self._session().conn

    def _session(self) -> _Session:
        self._main()
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None and session.epoch == self._epoch:
            return session
        with self._lock:
            epoch = self._epoch
            conn = self._take_spare()
            session = _Session(conn, epoch)
            self._sessions.add(session)
        self._local.session = session
        return session

    def _take_spare(self) -> libvirt.virConnect:
        """Under the lock: a spare connection, waiting up to OPEN_WAIT for the opener to open one
        when none is left. Never opens one itself (see the module's docstring)."""
        self._waiting += 1
        self._changed.notify_all()
        try:
            self._changed.wait_for(lambda: self._spares or self._closed or self._conn is None, OPEN_WAIT)
        finally:
            self._waiting -= 1
        if self._closed:
            raise OperationError(ErrorCode.unavailable, "the worker is shutting down", retryable=False)
        if self._conn is None:
            raise OperationError(ErrorCode.unavailable, f"lost the connection to libvirt at {self.uri}",
                                 retryable=True)
        if not self._spares:
            raise OperationError(ErrorCode.unavailable,
                                 f"libvirt at {self.uri} did not open a new connection within {OPEN_WAIT:g} s",
                                 retryable=True)
        return self._spares.pop()

    def _main(self) -> libvirt.virConnect:
        """The main connection; unavailable while there is none (the reconnect loop opens it: a
        caller never waits for an open, which a libvirtd that stopped answering never completes)."""
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            raise OperationError(ErrorCode.unavailable, "the worker is shutting down", retryable=False)
        raise OperationError(ErrorCode.unavailable, f"not connected to libvirt at {self.uri}", retryable=True)

    def is_alive(self) -> bool:
        """Whether the calling thread's connection (or, before it has one, the main one) is alive."""
        session: _Session | None = getattr(self._local, "session", None)
        return alive(session.conn if session is not None else self._conn)

    def invalidate(self, reason: str) -> None:
        """Forget the calling thread's connection and the main one if they are dead, so that the
        next call opens new ones."""
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None and not alive(session.conn):
            self._local.session = None
            with self._lock:
                self._sessions.discard(session)
        with self._lock:
            conn = self._conn
            if conn is not None and not alive(conn):
                self._drop(conn, reason)

    def close(self, patience: float = CLOSE_PATIENCE) -> None:
        """Close every connection. Closing asks libvirtd, which may not answer (a hung daemon): after
        `patience` seconds the rest is left to the process's exit."""
        with self._lock:
            self._closed = True
            self._connected.clear()
            self._changed.notify_all()
            conn, self._conn = self._conn, None
            sessions, self._sessions = list(self._sessions), weakref.WeakSet()
            spares, self._spares = self._spares, []
        closer = close_in_background([session.conn for session in sessions] + spares, main=conn)
        closer.join(patience)
        if closer.is_alive():
            log.warning("libvirt did not answer while its connections were closed; leaving them",
                        extra={"uri": self.uri, "waited_s": patience})

    def _connect(self) -> libvirt.virConnect:
        """A new connection (on the opener thread only)."""
        return open_connection(self.uri)

    def _open(self) -> None:
        """Open the main connection and the spares (outside the lock: libvirt may take its time, or
        forever) and make it the one threads' connections follow."""
        opened: list[libvirt.virConnect] = []
        try:
            conn = self._connect()
            opened.append(conn)
            conn.registerCloseCallback(self._closed_by_libvirt, None)
            for _ in range(self._spare_count):
                opened.append(self._connect())
        except BaseException:
            close_in_background(opened[1:], main=opened[0] if opened else None)
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._conn, self._spares = conn, opened[1:]
                self._changed.notify_all()
        if closed:
            close_in_background(opened[1:], main=conn)
            return
        log.info("connected to libvirt", extra={"uri": self.uri})
        if self._on_connect is not None:
            self._on_connect(conn)
        self._connected.set()

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
        """Under the lock: forget a dead main connection (and with it every thread's) and start
        re-opening one."""
        self._conn = None
        self._epoch += 1
        self._sessions = weakref.WeakSet()
        spares, self._spares = self._spares, []
        if spares:
            close_in_background(spares)
        self._pool_types.clear()
        self._connected.clear()
        log.warning("lost the connection to libvirt", extra={"uri": self.uri, "reason": reason})
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        if self._on_disconnect is not None:
            self._on_disconnect(reason)
        self._changed.notify_all()  # the opener re-opens it; threads waiting for a spare give up

    def _open_loop(self) -> None:
        """The opener thread: (re)opens the main connection with backoff whenever there is none, and
        a spare whenever more threads wait for one than there are spares."""
        delay = RECONNECT_MIN
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._closed or self._conn is None
                                       or self._waiting > len(self._spares))
                if self._closed:
                    return
                main_lost, epoch = self._conn is None, self._epoch
            try:
                if main_lost:
                    self._open()
                    delay = RECONNECT_MIN
                else:
                    self._add_spare(self._connect(), epoch)
                continue
            except (OperationError, libvirt.libvirtError) as error:
                message = error.message if isinstance(error, OperationError) else str(error)
                log.info("libvirt not reachable yet", extra={"uri": self.uri, "error": message, "retry_in_s": delay})
            with self._lock:
                self._changed.wait_for(lambda: self._closed, delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _add_spare(self, conn: libvirt.virConnect, epoch: int) -> None:
        """A connection opened for a waiting thread joins the spares, unless the main connection it
        was opened under is gone meanwhile."""
        with self._lock:
            current = not self._closed and self._epoch == epoch
            if current:
                self._spares.append(conn)
                self._changed.notify_all()
        if not current:
            close_in_background([conn])
