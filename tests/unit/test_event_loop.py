"""libvirt's event loop as the worker runs it (GLib's main loop in C)."""

from __future__ import annotations

import os
import threading

import libvirt

from worker.virt.event_loop import glib_main_loop
from worker.virt.event_loop import ensure_event_loop, event_loop_thread


def test_this_libvirt_event_loop_is_run_by_glib():
    assert glib_main_loop() is not None, f"libvirt {libvirt.getVersion()} here uses GLib's loop"


def test_the_loop_dispatches_libvirt_timers_and_handles():
    ensure_event_loop()
    assert event_loop_thread().is_alive()
    fired = threading.Event()

    def on_timeout(timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)
        fired.set()

    libvirt.virEventAddTimeout(0, on_timeout, None)
    assert fired.wait(5), "a libvirt timer fired on the worker's event loop"

    reader, writer = os.pipe()
    readable = threading.Event()

    def on_readable(watch: int, _fd: int, _events: int, _opaque: object) -> None:
        libvirt.virEventRemoveHandle(watch)
        readable.set()

    libvirt.virEventAddHandle(reader, libvirt.VIR_EVENT_HANDLE_READABLE, on_readable, None)
    try:
        os.write(writer, b"x")
        assert readable.wait(5), "a libvirt file handle was watched by the worker's event loop"
    finally:
        os.close(reader)
        os.close(writer)
