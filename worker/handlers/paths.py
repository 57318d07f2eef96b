"""Where paths may point (ALLOWED_ROOTS, docs/contract.md "Operations").

Pool target paths live on the libvirt host. When that is this machine (a LIBVIRT_URI without a host
name, such as qemu:///system) their symlinks are resolved before the check, as libvirt follows them
when it builds the pool: a link inside a root cannot lead the pool's directory outside it. Against a
remote libvirtd they can only be checked as written (the models require them absolute and
normalized). Upload sources and download destinations are files of the worker's own machine: their
symlinks are resolved before the check.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from messages.pools import DEVICE_TARGET_TYPES, FILE_TARGET_TYPES, PoolDefineArgs
from worker.errors import forbidden


def within(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def is_local(libvirt_uri: str) -> bool:
    """True when the URI names the libvirtd of this machine (no host name: qemu:///system)."""
    return not urlsplit(libvirt_uri).netloc


def check_pool_target(args: PoolDefineArgs, roots: list[str], *, local: bool) -> None:
    """`local`: libvirtd runs on this machine, so the path's symlinks can be resolved here."""
    if args.target is None:
        return
    path = args.target.path
    if args.type in FILE_TARGET_TYPES and not within(path, roots):
        raise forbidden(f"pool target path {path!r} is outside the allowed roots {roots}; "
                        f"choose a directory under one of them or add a root to ALLOWED_ROOTS")
    if args.type in FILE_TARGET_TYPES and local:
        real = os.path.realpath(path)
        if not within(real, [os.path.realpath(root) for root in roots]):
            raise forbidden(f"pool target path {path!r} resolves to {real!r} (through a symlink), outside the "
                            f"allowed roots {roots}")
    if args.type in DEVICE_TARGET_TYPES and not within(path, ["/dev"]):
        raise forbidden(f"the target path of a {args.type} pool lists device nodes and must lie under /dev, "
                        f"got {path!r}")


def check_local_file(path: str, roots: list[str], what: str) -> str:
    """The real path of a worker-local file, when it lies under an allowed root."""
    real = os.path.realpath(path)
    real_roots = [os.path.realpath(root) for root in roots]
    if not within(real, real_roots):
        shown = path if real == path else f"{path!r} (which resolves to {real!r})"
        raise forbidden(f"{what} {shown} is outside the allowed roots {roots}")
    return real
