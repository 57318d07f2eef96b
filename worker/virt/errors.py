"""The one place that turns a libvirtError into a contract error code and a retryable flag.

Transient (retried): a lost connection (the caller reconnects first), RPC failures, timeouts, a pool
busy with asynchronous jobs, a volume still being allocated. Permanent (never retried): missing
pools/volumes/domains, bad XML or arguments, things that already exist, unsupported operations,
access denied, a pool out of space (`no_space`), and the failures of the programs storage backends
run (mount, umount, mkfs: worker/virt/storage_errors.py).
"""

from __future__ import annotations

import re

import libvirt

from messages.results import ErrorCode, LibvirtError
from worker.errors import OperationError
from worker.virt import storage_errors

E = ErrorCode

_BY_CODE: dict[int, tuple[ErrorCode, bool]] = {
    libvirt.VIR_ERR_NO_STORAGE_POOL: (E.not_found, False),
    libvirt.VIR_ERR_NO_STORAGE_VOL: (E.not_found, False),
    libvirt.VIR_ERR_NO_DOMAIN: (E.not_found, False),
    libvirt.VIR_ERR_NO_SECRET: (E.not_found, False),
    libvirt.VIR_ERR_DEVICE_MISSING: (E.not_found, False),
    libvirt.VIR_ERR_STORAGE_VOL_EXIST: (E.conflict, False),
    libvirt.VIR_ERR_STORAGE_POOL_BUILT: (E.conflict, False),
    libvirt.VIR_ERR_DOM_EXIST: (E.conflict, False),
    libvirt.VIR_ERR_OPERATION_INVALID: (E.invalid, False),
    libvirt.VIR_ERR_INVALID_ARG: (E.invalid, False),
    libvirt.VIR_ERR_XML_ERROR: (E.invalid, False),
    libvirt.VIR_ERR_XML_DETAIL: (E.invalid, False),
    libvirt.VIR_ERR_STORAGE_PROBE_FAILED: (E.invalid, False),
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED: (E.unsupported, False),
    libvirt.VIR_ERR_NO_SUPPORT: (E.unsupported, False),
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: (E.unsupported, False),
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: (E.unsupported, False),
    libvirt.VIR_ERR_OPERATION_DENIED: (E.forbidden, False),
    libvirt.VIR_ERR_ACCESS_DENIED: (E.forbidden, False),
    libvirt.VIR_ERR_AUTH_FAILED: (E.forbidden, False),
    libvirt.VIR_ERR_RESOURCE_BUSY: (E.busy, True),
    libvirt.VIR_ERR_OPERATION_TIMEOUT: (E.timeout, True),
    libvirt.VIR_ERR_OPERATION_ABORTED: (E.cancelled, False),
    libvirt.VIR_ERR_OVERFLOW: (E.invalid, False),
}

# Codes that mean the connection itself is gone: reconnect, then retry.
_CONNECTION_CODES = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}

_INACTIVE_POOL = re.compile(r"storage pool '([^']+)' is not active")

# INTERNAL_ERROR and OPERATION_INVALID carry several distinct conditions; the message tells them apart.
# "is still in use": libvirtd itself still runs an earlier wipe or clone of the volume, e.g. one
# whose worker was killed (libvirtd finishes what it started).
_BUSY_MESSAGES = ("has asynchronous jobs running", "is still being allocated", "is starting up",
                  "is still in use")
# Generic codes under which libvirt also says "it exists": the daemon reports a clone onto an
# existing name as INTERNAL_ERROR "storage volume name 'x' already in use.", a duplicate pool as
# OPERATION_FAILED "pool 'p' already exists with uuid ...", the test driver an existing volume as
# OPERATION_FAILED "storage vol already exists".
_EXISTS_MESSAGES = ("already exists", "exists already", "already in use", "already defined")
# Out of space, however libvirt says it: ENOSPC from a write, an allocation or qemu-img (SYSTEM_ERROR,
# or INTERNAL_ERROR from a child process); a resize with ALLOCATE beyond the pool's available bytes
# (OPERATION_FAILED); no free extent for a new partition (INTERNAL_ERROR).
_NO_SPACE_MESSAGES = ("no space left on device", "not enough space left in storage pool",
                      "no large enough free extent")
_CONNECTION_MESSAGES = ("client socket is closed", "end of file while reading data",
                        "cannot recv data", "cannot write data", "broken pipe",
                        "connection reset by peer", "failed to connect socket")


def details(error: libvirt.libvirtError) -> LibvirtError:
    return LibvirtError(code=error.get_error_code() or 0, domain=error.get_error_domain() or 0,
                        message=error.get_error_message() or str(error))


def is_no_space(error: libvirt.libvirtError) -> bool:
    """True when libvirt says the pool (or the filesystem under it) has no room for what was asked."""
    text = (error.get_error_message() or str(error)).lower()
    return error.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                                      libvirt.VIR_ERR_OPERATION_FAILED) and any(m in text for m in _NO_SPACE_MESSAGES)


def classify(error: libvirt.libvirtError, connection_alive: bool = True) -> OperationError:
    """The contract error for a libvirtError; `connection_alive` is the connection's state after it."""
    info = details(error)
    text = info.message.lower()
    if (not connection_alive or info.code in _CONNECTION_CODES
            or (info.code == libvirt.VIR_ERR_SYSTEM_ERROR and (info.domain in _CONNECTION_DOMAINS
                                                             or any(m in text for m in _CONNECTION_MESSAGES)))
            or any(m in text for m in _CONNECTION_MESSAGES)):
        return OperationError(E.unavailable, f"lost the connection to libvirt: {info.message}",
                              retryable=True, libvirt=info, reconnect=True)
    if info.code == libvirt.VIR_ERR_NO_STORAGE_POOL and "matching uuid" in text:
        # A kept pool handle whose pool was undefined and defined again: look it up afresh and retry.
        return OperationError(E.busy, f"the pool was redefined while in use: {info.message}", retryable=True,
                              libvirt=info, stale_pool=True)
    inactive = _INACTIVE_POOL.search(info.message)
    if info.code == libvirt.VIR_ERR_OPERATION_INVALID and inactive:
        return OperationError(E.invalid, f"pool {inactive.group(1)!r} is not running; start it with pool.start first",
                              libvirt=info)
    if is_no_space(error):
        return OperationError(E.no_space, f"the pool has no room for it: {info.message}", libvirt=info)
    explained = storage_errors.explain(info)
    if explained is not None:
        return OperationError(explained[0], explained[1], libvirt=info)
    if info.code in (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_OPERATION_INVALID) \
            and any(m in text for m in _BUSY_MESSAGES):
        return OperationError(E.busy, f"libvirt is busy: {info.message}", retryable=True, libvirt=info)
    if info.code in (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_OPERATION_FAILED) \
            and any(m in text for m in _EXISTS_MESSAGES):
        return OperationError(E.conflict, f"libvirt: {info.message}", libvirt=info)
    code, retryable = _BY_CODE.get(info.code, (E.internal, False))
    return OperationError(code, f"libvirt: {info.message}", retryable=retryable, libvirt=info)
