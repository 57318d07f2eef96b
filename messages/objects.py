"""The resource objects results and events carry (docs/contract.md "Operations")."""

from __future__ import annotations

from enum import Enum

from messages.fields import Size, Strict


class PoolState(str, Enum):
    inactive = "inactive"
    building = "building"
    running = "running"
    degraded = "degraded"
    inaccessible = "inaccessible"


class PoolObject(Strict):
    name: str
    uuid: str
    type: str
    state: PoolState
    persistent: bool
    autostart: bool
    capacity: Size
    allocation: Size
    available: Size
    target_path: str | None


class VolumeObject(Strict):
    pool: str
    name: str
    key: str
    path: str
    type: str
    format: str | None
    capacity: Size
    allocation: Size


class DiskObject(Strict):
    domain: str
    target: str
    pool: str
    name: str
