"""The result message (docs/contract.md "Results")."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field

from messages.fields import Strict


class Status(str, Enum):
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"
    cancelled = "cancelled"


class ErrorCode(str, Enum):
    """What went wrong (docs/contract.md "Results"). Version 2 adds `no_space`: the volume does not fit
    in its pool (the message gives the bytes requested and the bytes available; not retryable)."""

    invalid = "invalid"
    forbidden = "forbidden"
    not_found = "not_found"
    conflict = "conflict"
    busy = "busy"
    unsupported = "unsupported"
    unavailable = "unavailable"
    expired = "expired"
    timeout = "timeout"
    cancelled = "cancelled"
    internal = "internal"
    in_use = "in_use"
    no_space = "no_space"


class LibvirtError(Strict):
    code: int
    domain: int
    message: str


class ErrorInfo(Strict):
    code: ErrorCode
    message: str = Field(description="What was wrong, with which value")
    retryable: bool
    libvirt: LibvirtError | None = None


class Result(Strict):
    id: str | None
    op: str | None
    host: str
    status: Status
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    attempts: int = Field(0, ge=0, description="How many times the operation was tried; 0 when never executed")
    duplicate: bool = False
    received_at: datetime
    started_at: datetime | None = None
    finished_at: datetime

    def routing_key(self) -> str:
        return f"{self.host}.{self.op or 'unknown'}.{self.status.value}"
