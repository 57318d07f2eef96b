"""worker.virt.errors.classify: real libvirtErrors from libvirt's in-process test driver.

Where the test driver cannot produce a condition (a pool busy with asynchronous jobs), the error is
built the way libvirt-python builds it: a libvirtError whose `err` tuple is
(code, domain, message, level, str1, str2, str3, int1, int2).
"""

from __future__ import annotations

import uuid

import libvirt
import pytest

from messages.results import ErrorCode
from worker.virt.errors import classify

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # keep libvirt from printing to stderr


@pytest.fixture
def pool(conn):
    pool = conn.storagePoolLookupByName("default-pool")
    yield pool
    if not pool.isActive():  # a test stopped it: the driver's state is shared in the process
        pool.create(0)


def raised(call) -> libvirt.libvirtError:
    with pytest.raises(libvirt.libvirtError) as caught:
        call()
    return caught.value


def simulated(code: int, message: str, domain: int = libvirt.VIR_FROM_STORAGE) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return error


def volume_xml(name: str) -> str:
    return f"<volume><name>{name}</name><capacity>1048576</capacity></volume>"


def test_no_such_pool_is_not_found(conn):
    error = classify(raised(lambda: conn.storagePoolLookupByName("nope")))
    assert (error.code, error.retryable, error.reconnect) == (ErrorCode.not_found, False, False)
    assert error.libvirt.code == libvirt.VIR_ERR_NO_STORAGE_POOL
    assert "nope" in error.message and "nope" in error.libvirt.message


def test_no_such_volume_is_not_found(pool):
    error = classify(raised(lambda: pool.storageVolLookupByName("missing.img")))
    assert (error.code, error.retryable) == (ErrorCode.not_found, False)
    assert error.libvirt.code == libvirt.VIR_ERR_NO_STORAGE_VOL


def test_creating_an_existing_volume_is_a_conflict(pool):
    name = f"dup-{uuid.uuid4().hex[:8]}.img"
    volume = pool.createXML(volume_xml(name), 0)
    try:
        error = classify(raised(lambda: pool.createXML(volume_xml(name), 0)))
    finally:
        volume.delete(0)
    assert (error.code, error.retryable) == (ErrorCode.conflict, False)


@pytest.mark.parametrize("code, message", [
    # What the real daemon (qemu:///system, dir pool) answered on the development machine:
    (libvirt.VIR_ERR_STORAGE_VOL_EXIST, "storage volume 'u1' exists already"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: storage volume name 'u1' already in use."),  # clone
    (libvirt.VIR_ERR_OPERATION_FAILED, "operation failed: pool 'p1' already exists with uuid 8cf8d894"),
])
def test_the_daemons_ways_of_saying_it_exists_are_conflicts(code, message):
    assert classify(simulated(code, message)).code == ErrorCode.conflict


def test_invalid_xml_is_invalid(pool):
    error = classify(raised(lambda: pool.createXML("<volume><name>", 0)))
    assert (error.code, error.retryable) == (ErrorCode.invalid, False)
    assert error.libvirt.code in (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL)


def test_an_operation_on_an_inactive_pool_is_invalid(pool):
    pool.destroy()
    try:
        error = classify(raised(lambda: pool.listAllVolumes(0)))
    finally:
        pool.create(0)
    assert (error.code, error.retryable) == (ErrorCode.invalid, False)
    assert error.libvirt.code == libvirt.VIR_ERR_OPERATION_INVALID
    assert "not active" in error.message


def test_any_error_on_a_dead_connection_is_unavailable_and_reconnects(conn):
    error = classify(raised(lambda: conn.storagePoolLookupByName("nope")), connection_alive=False)
    assert (error.code, error.retryable, error.reconnect) == (ErrorCode.unavailable, True, True)
    assert error.libvirt.code == libvirt.VIR_ERR_NO_STORAGE_POOL  # the original is kept for the result


@pytest.mark.parametrize("code, domain, message", [
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "Cannot recv data: Connection reset by peer"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, "client socket is closed"),
    (libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC, "unexpected RPC"),
    (libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_FROM_NONE, "invalid connection pointer"),
])
def test_lost_connections_are_recognised(code, domain, message):
    error = classify(simulated(code, message, domain))
    assert (error.code, error.retryable, error.reconnect) == (ErrorCode.unavailable, True, True)


@pytest.mark.parametrize("code, message", [
    (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: pool 'images' has asynchronous jobs running."),
    (libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: volume 'a.img' is still being allocated."),
])
def test_busy_pools_and_volumes_are_retryable(code, message):
    error = classify(simulated(code, message))
    assert (error.code, error.retryable, error.reconnect) == (ErrorCode.busy, True, False)
    assert error.libvirt.code == code


def test_an_internal_error_with_another_message_is_internal_and_permanent():
    error = classify(simulated(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: something odd"))
    assert (error.code, error.retryable) == (ErrorCode.internal, False)


def test_an_error_without_details_keeps_its_text():
    error = classify(libvirt.libvirtError("virStoragePoolCreate() failed"))  # err is None
    assert error.code == ErrorCode.internal
    assert error.libvirt.code == 0 and error.libvirt.message == "virStoragePoolCreate() failed"
