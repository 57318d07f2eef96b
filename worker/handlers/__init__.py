"""Handlers: one function per operation, bound to its entry of the operation table
(messages.operations) with `@handles` (worker.handlers.registry).

Handlers call libvirt directly; a libvirtError escaping a handler is classified and, when transient,
the whole handler is tried again (handlers converge, so a repeat is safe).
"""

from __future__ import annotations

from worker.handlers import clones, disks, downloads, host, pools, transfers, volumes  # noqa: F401 (each binds its handlers)
from worker.handlers.registry import HANDLERS, handles

__all__ = ["HANDLERS", "handles"]
