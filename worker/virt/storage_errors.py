"""What the failures of the programs libvirt's storage backends run (mount, umount, mkfs, qemu-img),
of their build step and of an iscsi-direct login mean, in the contract's codes, with a message that
says what to do.

libvirt reports a failed child process as INTERNAL_ERROR from VIR_FROM_NONE with the program's own
words: "Child process (/bin/mount -o nodev,nosuid,noexec -t ext4 /dev/loop3 /p) unexpected exit
status 32: mount: /p: mount point does not exist." (measured on libvirt 9.0.0 with util-linux 2.38,
e2fsprogs 1.47, xfsprogs 6.1: tests/integration/test_block_pools_libvirt.py). Each rule below
matches the program and a phrase of its error; what matches none stays `internal` with libvirt's
message.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import libvirt

from messages.results import ErrorCode, LibvirtError

E = ErrorCode

_CHILD = re.compile(r"Child process \((?P<command>[^)]*)\) unexpected exit status \d+: (?P<output>.*)", re.DOTALL)
_UNKNOWN_FS = re.compile(r"unknown filesystem type '([^']+)'")
_NO_MKFS = re.compile(r"failed to execute (mkfs\.[A-Za-z0-9+_-]+)")
_UNKNOWN_IMAGE = re.compile(r"Unknown file format '([^']+)'")
_NO_DEVICE = re.compile(r"Source device does not exist when formatting pool '([^']+)'")
_MISMATCH = re.compile(r"Format of device '([^']+)' does not match the expected format '([^']+)'")


@dataclass(frozen=True)
class _Mount:
    """The parts of a mount command line: mount [-o OPTIONS] [-t TYPE] SOURCE TARGET."""

    source: str
    target: str
    fstype: str

    @classmethod
    def parse(cls, words: list[str]) -> "_Mount":
        fstype, rest, skip = "", [], False
        for index, word in enumerate(words[1:], start=1):
            if skip:
                skip = False
                continue
            if word in ("-o", "-t"):
                skip = True
                if word == "-t" and index + 1 < len(words):
                    fstype = words[index + 1]
                continue
            rest.append(word)
        source, target = (rest + ["?", "?"])[:2]
        return cls(source=source, target=target, fstype=fstype or "the pool's")


def explain(info: LibvirtError) -> tuple[ErrorCode, str] | None:
    """(code, message) for a failure of a storage backend's helper program or build, or None."""
    if info.code == libvirt.VIR_ERR_STORAGE_POOL_BUILT:
        return _already_built(info.message)
    missing = _NO_DEVICE.search(info.message) if info.code == libvirt.VIR_ERR_OPERATION_INVALID else None
    if missing:
        return E.not_found, (f"building pool {missing.group(1)!r} failed: its source device does not exist on "
                             f"this host")
    if info.code != libvirt.VIR_ERR_INTERNAL_ERROR:
        return None
    if info.domain == libvirt.VIR_FROM_STORAGE:
        return _iscsi(info.message)
    child = _CHILD.search(info.message)
    if child is None:
        return None
    try:
        words = shlex.split(child.group("command"))
    except ValueError:
        words = child.group("command").split()
    program = words[0].rsplit("/", 1)[-1] if words else ""
    output = child.group("output").strip()
    if program == "mount":
        return _mount(_Mount.parse(words), output)
    if program == "umount":
        return _umount(words[-1] if len(words) > 1 else "?", output)
    if program.startswith("mkfs"):
        return _mkfs(words[-1] if len(words) > 1 else "?", output)
    unknown = _UNKNOWN_IMAGE.search(output) if program == "qemu-img" else None
    if unknown:
        # libvirt 9.0 lists 'vhd' among the formats of file pools; qemu-img calls that format 'vpc'.
        return E.unsupported, (f"qemu-img on this host cannot make {unknown.group(1)!r} images "
                               f"(qemu-img: Unknown file format {unknown.group(1)!r})")
    return None


def _mount(m: _Mount, output: str) -> tuple[ErrorCode, str] | None:
    failed = f"mounting {m.source} on {m.target} failed"
    if "mount point does not exist" in output:
        return E.invalid, (f"{failed}: the mount point {m.target} does not exist. Build the pool (pool.build, or "
                           f"pool.start with build: true) or create the directory, then start it again")
    if "wrong fs type, bad option, bad superblock" in output:
        return E.invalid, (f"{failed}: {m.source} holds no {m.fstype} filesystem mount can read (it is blank, "
                           f"or formatted otherwise). pool.build formats a blank device; pool.build with "
                           f"overwrite: true formats it whatever it holds (destroying that)")
    if "already mounted or mount point busy" in output:
        return E.busy, (f"{failed}: {m.source} is in use (mounted elsewhere, or held open by another program) "
                        f"or {m.target} is busy; free it, then start the pool again")
    if "special device" in output and "does not exist" in output:
        return E.not_found, f"{failed}: the source device {m.source} does not exist on this host"
    unknown = _UNKNOWN_FS.search(output)
    if unknown:
        fstype = unknown.group(1)
        return E.unsupported, (f"{failed}: this host's kernel cannot mount {fstype} filesystems (mount: unknown "
                               f"filesystem type {fstype!r}); the pool can start only on a host that can "
                               f"(for nfs: one with an NFS client)")
    return None


def _umount(target: str, output: str) -> tuple[ErrorCode, str] | None:
    if "target is busy" in output:
        return E.busy, (f"unmounting {target} failed: programs still use files under it (fuser -vm {target} "
                        f"names them); the pool keeps running until they let go, then stop it again")
    return None


def _mkfs(device: str, output: str) -> tuple[ErrorCode, str] | None:
    failed = f"formatting {device} failed"
    if "is mounted; will not make a filesystem here" in output or "contains a mounted filesystem" in output:
        return E.busy, f"{failed}: it is mounted; unmount it, then build the pool again"
    if "apparently in use by the system" in output:
        return E.busy, f"{failed}: it is in use (held open by another program); free it, then build the pool again"
    missing = _NO_MKFS.search(output)
    if missing and missing.group(1) == "mkfs.auto":
        return E.invalid, (f"{failed}: the pool's source.format is 'auto', which names no filesystem to make; "
                           f"define the pool with the filesystem in source.format (e.g. 'ext4' or 'xfs')")
    if missing:
        return E.unsupported, f"{failed}: this host has no {missing.group(1)}"
    if "must be larger than" in output:
        return E.invalid, f"{failed}: the device is too small for this filesystem ({output.splitlines()[0]})"
    return None


def _iscsi(message: str) -> tuple[ErrorCode, str] | None:
    """libiscsi's login failures (iscsi-direct pools)."""
    if "Failed to login" in message and "Target not found" in message:
        return E.not_found, (f"the iSCSI login failed: the portal has no target with the pool's IQN, or the target "
                             f"does not admit the pool's initiator IQN ({message.split(': ', 1)[-1]})")
    if "Failed to connect" in message:
        return E.unavailable, (f"the iSCSI portal of the pool did not answer: nothing listens at its host and port, "
                               f"or the network is in the way ({message.split(': ', 1)[-1]})")
    return None


def _already_built(message: str) -> tuple[ErrorCode, str] | None:
    mismatch = _MISMATCH.search(message)
    if mismatch:
        device, wanted = mismatch.groups()
        return E.conflict, (f"{device} holds something other than the pool's {wanted!r} format: building "
                            f"without overwrite spares it. pool.build with overwrite: true formats it anyway, "
                            f"destroying what it holds")
    return None
