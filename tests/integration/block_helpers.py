"""Small helpers shared by the tests that drive fs, disk and iscsi-direct pools through the worker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from messages.client import StorageClient
from tests.integration.conftest import error_of, ok

MiB = 2**20
ALL_OPERATIONS = ["create", "delete", "resize", "upload", "download", "wipe", "clone", "attach"]


def mounts_at(target: Path | str) -> list[tuple[str, str]]:
    """(source, fs type) of each mount on `target`, in mount order."""
    found = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            source, point, fstype = line.split()[:3]
            if point == str(target):
                found.append((source, fstype))
    return found


def sha256(path: str | Path, offset: int = 0, length: int | None = None) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return hashlib.sha256(handle.read(length) if length is not None else handle.read()).hexdigest()


def call(client: StorageClient, op: str, timeout: float = 120, **args) -> dict:
    """The payload of a command that must succeed."""
    return ok(client.call(op, args, timeout=timeout))


def fails(client: StorageClient, op: str, code: str, status: str = "failed", **args) -> str:
    """The message of a command that must end `status` with `code`."""
    return error_of(client.call(op, args, timeout=120), status, code)


def names(client: StorageClient, pool: str) -> list[str]:
    return [v["name"] for v in call(client, "volume.list", pool=pool)["volumes"]]


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path
