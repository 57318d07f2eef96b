"""Each thread gets a libvirt connection of its own (libvirt's in-process test driver)."""

from __future__ import annotations

import gc
import threading

import pytest

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.gateway import LibvirtGateway


@pytest.fixture
def gateway():
    opened = []
    g = LibvirtGateway("test:///default", on_connect=opened.append)
    g.opened = opened
    g.start()
    assert g.wait_connected(10)
    yield g
    g.close()


def in_thread(fn):
    """fn() on a new thread: its value, or the exception it raised."""
    out = []

    def run():
        try:
            out.append(fn())
        except Exception as error:  # handed to the caller
            out.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def test_a_thread_keeps_its_connection_and_other_threads_get_their_own(gateway):
    mine = gateway.connection()
    assert gateway.connection() is mine
    theirs = in_thread(gateway.connection)
    assert theirs is not mine
    assert len(gateway.opened) == 1, "one main connection, whose callbacks run once"
    assert gateway.opened[0] is not mine and gateway.opened[0] is not theirs


def test_pool_handles_are_kept_per_connection_and_forgotten_on_all(gateway):
    mine = gateway.pool("default-pool")
    assert gateway.pool("default-pool") is mine, "looked up once"
    theirs = in_thread(lambda: gateway.pool("default-pool"))
    assert theirs.connect() is not mine.connect()
    assert in_thread(lambda: gateway.volumes) is not gateway.volumes, "volume handles too"
    gateway.forget_pools("default-pool")
    assert gateway.pool("default-pool") is not mine
    assert gateway.pool("missing") is None


def test_a_lost_main_connection_replaces_every_threads_connection(gateway):
    before = gateway.connection()
    main = gateway.opened[0]
    main.close()  # the test driver does not call close callbacks: what the callback does, by hand
    gateway._forget(main, "eof")
    assert gateway.wait_connected(10), "the main connection was opened again in the background"
    assert gateway.connection() is not before
    assert len(gateway.opened) == 2


def test_closed_gateway_refuses_connections(gateway):
    gateway.connection()
    gateway.close()
    with pytest.raises(Exception, match="shutting down"):
        gateway.connection()


def test_a_thread_that_ends_releases_its_connection(gateway):
    gateway.connection()
    in_thread(gateway.connection)
    gc.collect()
    assert len(gateway._sessions) == 1, "only this thread's session is left"


def test_without_a_main_connection_a_caller_is_told_unavailable_and_opens_nothing():
    """Only the reconnect loop opens the main connection: a caller never waits for an open that a
    hung libvirtd would never complete."""
    opened = []
    gateway = LibvirtGateway("test:///default", on_connect=opened.append)
    with pytest.raises(OperationError) as refused:
        gateway.connection()
    assert refused.value.code is ErrorCode.unavailable and refused.value.retryable
    assert "test:///default" in refused.value.message
    assert opened == [] and not gateway.connected
    gateway.start()
    assert gateway.wait_connected(10) and len(opened) == 1
    gateway.close()


def test_threads_take_the_spare_connections_opened_with_the_main_one():
    gateway = LibvirtGateway("test:///default", spares=2)
    gateway.start()
    assert gateway.wait_connected(10)
    spares = list(gateway._spares)
    assert len(spares) == 2
    taken = {id(gateway.connection()), id(in_thread(gateway.connection))}
    assert taken == {id(conn) for conn in spares}, "no thread had to open a connection"
    assert gateway._spares == []
    assert in_thread(gateway.connection) not in spares, "once they are gone, the opener opens one"
    gateway.close()


def test_a_thread_never_opens_a_connection_itself_and_gives_up_after_the_open_wait(monkeypatch):
    """libvirt's open has no timeout: against a libvirtd that answers nothing it never returns. A
    thread that needs a new connection while the main one still looks alive asks the opener and is
    told `unavailable` after OPEN_WAIT, instead of hanging with its command."""
    from worker.virt import connections
    from worker.virt import gateway as gateway_module

    gateway = LibvirtGateway("test:///default", spares=1)
    gateway.start()
    assert gateway.wait_connected(10)
    gateway.connection()  # this thread takes the only spare
    hung = threading.Event()
    opened_by: list[str] = []
    real_open = connections.libvirt.open

    def open_that_hangs(uri):
        opened_by.append(threading.current_thread().name)
        hung.wait(30)
        return real_open(uri)

    monkeypatch.setattr(connections.libvirt, "open", open_that_hangs)
    monkeypatch.setattr(gateway_module, "OPEN_WAIT", 0.5)
    with pytest.raises(OperationError) as refused:
        in_thread(gateway.connection)
    assert refused.value.code is ErrorCode.unavailable and refused.value.retryable
    assert "did not open a new connection within 0.5 s" in refused.value.message
    assert opened_by == ["libvirt-opener"], "only the opener thread called libvirt.open"
    hung.set()
    gateway.close()
