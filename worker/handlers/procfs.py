"""What this machine's /proc tells about open files: where a descriptor points, the process umask,
and the file offsets of whoever has a volume open (to sample the progress of a copy or wipe that
libvirtd or a helper it runs makes). Readable only when libvirt runs on this machine."""

from __future__ import annotations

import os


def fd_path(fd: int) -> str | None:
    """What an open descriptor really points at, to check it after opening."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def umask() -> int | None:
    """This process's umask, read without changing it (os.umask would)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def write_positions(path: str) -> list[int]:
    """File offsets of every open descriptor on `path` in this machine's processes (libvirtd's own
    copy or wipe, or the scrub/qemu-img it runs). Readable when libvirt runs on this machine."""
    positions = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != path:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    for line in info:
                        if line.startswith("pos:"):
                            positions.append(int(line.split()[1]))
                            break
            except (OSError, ValueError):
                continue
    return positions
