"""What libvirt's storage failures become (worker.virt.errors.classify with
worker.virt.storage_errors): out of space, mount/umount/mkfs, builds, iSCSI logins. The messages are
libvirt 9.0.0's own, as measured in tests/integration/test_block_pools_libvirt.py."""

from __future__ import annotations

import libvirt
import pytest

from messages.results import ErrorCode as E
from worker.virt.errors import classify, is_no_space

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

NONE, STORAGE, STREAMS = libvirt.VIR_FROM_NONE, libvirt.VIR_FROM_STORAGE, libvirt.VIR_FROM_STREAMS
INTERNAL, SYSTEM = libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_SYSTEM_ERROR
T, D = "/srv/pools/p", "/dev/loop3"


def error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    made = libvirt.libvirtError(message)
    made.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, -1, -1)
    return made


def child(command: str, output: str, status: int = 32) -> libvirt.libvirtError:
    return error(INTERNAL, NONE,
                 f"internal error: Child process ({command}) unexpected exit status {status}: {output}\n")


MOUNT = f"/bin/mount -o nodev,nosuid,noexec -t ext4 {D} {T}"


@pytest.mark.parametrize("raised", [
    error(SYSTEM, STORAGE, f"cannot allocate 104857600 bytes in file '{T}/big.raw': No space left on device"),
    error(SYSTEM, STREAMS, f"Unable to write {T}/sparse.raw: No space left on device"),
    error(SYSTEM, STORAGE, f"failed writing to file '{T}/c.raw': No space left on device"),
    error(libvirt.VIR_ERR_OPERATION_FAILED, STORAGE, "operation failed: Not enough space left in storage pool"),
    error(INTERNAL, STORAGE, "internal error: no large enough free extent"),
    child(f"/usr/bin/qemu-img convert -f raw -O qcow2 {T}/a.raw {T}/c.qcow2",
          "qemu-img: error while writing at byte 23068672: No space left on device", 1),
], ids=["allocate", "stream", "copy", "resize", "extent", "qemu-img"])
def test_out_of_space_is_no_space_and_not_retried(raised):
    assert is_no_space(raised)
    classified = classify(raised)
    assert (classified.code, classified.retryable) == (E.no_space, False)
    assert classified.libvirt.message == raised.get_error_message()


def test_other_system_errors_are_not_no_space():
    assert not is_no_space(error(SYSTEM, STORAGE, f"cannot open '{T}/a': Permission denied"))
    assert not is_no_space(error(libvirt.VIR_ERR_INVALID_ARG, STORAGE, "no space left on device"))


@pytest.mark.parametrize("raised, code, says", [
    (child(MOUNT, f"mount: {T}: mount point does not exist."), E.invalid,
     f"mounting {D} on {T} failed: the mount point {T} does not exist. Build the pool (pool.build, or pool.start "
     f"with build: true) or create the directory, then start it again"),
    (child(MOUNT, f"mount: {T}: wrong fs type, bad option, bad superblock on {D}, missing codepage or helper "
                  f"program, or other error."), E.invalid,
     f"mounting {D} on {T} failed: {D} holds no ext4 filesystem mount can read"),
    (child(MOUNT, f"mount: {T}: {D} already mounted or mount point busy."), E.busy,
     f"mounting {D} on {T} failed: {D} is in use (mounted elsewhere, or held open by another program) or {T} is busy"),
    (child(f"/bin/mount -o nodev,nosuid,noexec -t ext4 /dev/nonexistent-blk {T}",
           f"mount: {T}: special device /dev/nonexistent-blk does not exist."), E.not_found,
     "the source device /dev/nonexistent-blk does not exist on this host"),
    (child(f"/bin/mount -o nodev,nosuid,noexec,nfsvers=4,sync -t nfs 127.0.0.1:/export/images {T}",
           f"mount: {T}: unknown filesystem type 'nfs'."), E.unsupported,
     f"mounting 127.0.0.1:/export/images on {T} failed: this host's kernel cannot mount nfs filesystems"),
    (child(f"/bin/umount {T}", f"umount: {T}: target is busy."), E.busy,
     f"unmounting {T} failed: programs still use files under it (fuser -vm {T} names them)"),
    (child(f"/sbin/mkfs -t ext4 -F {D}", f"mke2fs 1.47.0 (5-Feb-2023)\n{D} is mounted; will not make a filesystem "
                                         f"here!", 1), E.busy, f"formatting {D} failed: it is mounted"),
    (child(f"/sbin/mkfs -t ext4 -F {D}", f"{D} is apparently in use by the system; will not make a filesystem here!",
           1), E.busy, f"formatting {D} failed: it is in use"),
    (child(f"/sbin/mkfs -t auto {D}", "mkfs: failed to execute mkfs.auto: No such file or directory", 1), E.invalid,
     "the pool's source.format is 'auto', which names no filesystem to make"),
    (child(f"/sbin/mkfs -t gfs2 {D}", "mkfs: failed to execute mkfs.gfs2: No such file or directory", 1),
     E.unsupported, "this host has no mkfs.gfs2"),
    (child(f"/sbin/mkfs -t xfs -f {D}", "Filesystem must be larger than 300MB.\nUsage: mkfs.xfs", 1), E.invalid,
     "the device is too small for this filesystem (Filesystem must be larger than 300MB.)"),
    (error(libvirt.VIR_ERR_STORAGE_POOL_BUILT, STORAGE,
           f"Storage pool already built: Format of device '{D}' does not match the expected format 'xfs', "
           f"forced overwrite is necessary"),
     E.conflict, f"{D} holds something other than the pool's 'xfs' format: building without overwrite spares it"),
    (error(libvirt.VIR_ERR_OPERATION_INVALID, STORAGE, "Requested operation is not valid: Source device does not "
                                                       "exist when formatting pool 'p1'"),
     E.not_found, "building pool 'p1' failed: its source device does not exist on this host"),
    (error(INTERNAL, STORAGE, "internal error: Failed to login: Failed to log in to target. Status: Target not "
                              "found(515)"), E.not_found, "the iSCSI login failed: the portal has no target"),
    (error(INTERNAL, STORAGE, "internal error: Failed to connect: iscsi_service failed with : "
                              "iscsi_service_reconnect_if_loggedin. Can not reconnect right now."),
     E.unavailable, "the iSCSI portal of the pool did not answer"),
    (child("/usr/bin/qemu-img create -f vhd /srv/p/v 1024K", "qemu-img: /srv/p/v: Unknown file format 'vhd'", 1),
     E.unsupported, "qemu-img on this host cannot make 'vhd' images"),
], ids=["no-mount-point", "wrong-fs", "device-busy", "no-device", "no-nfs", "umount-busy", "mkfs-mounted",
        "mkfs-in-use", "mkfs-auto", "no-mkfs", "too-small", "other-format", "build-no-device", "iscsi-login",
        "iscsi-connect", "qemu-img-format"])
def test_storage_failures_get_codes_and_advice(raised, code, says):
    classified = classify(raised)
    assert classified.code is code and classified.retryable is False
    assert says in classified.message, classified.message
    assert classified.libvirt.message == raised.get_error_message()


def test_already_built_as_asked_is_left_to_the_build_handler_as_a_conflict():
    raised = error(libvirt.VIR_ERR_STORAGE_POOL_BUILT, STORAGE,
                   f"Storage pool already built: Device '{D}' already formatted using 'ext4'")
    assert classify(raised).code is E.conflict


@pytest.mark.parametrize("raised", [
    child(MOUNT, "mount: something nobody has seen before"),
    child(f"parted {D} rm --script p1", "Error: Partition doesn't exist.", 1),
    error(INTERNAL, STORAGE, "internal error: unexpected data"),
])
def test_unknown_failures_stay_internal_with_libvirts_words(raised):
    classified = classify(raised)
    assert classified.code is E.internal and raised.get_error_message() in classified.message
