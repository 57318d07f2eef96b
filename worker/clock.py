"""The worker's wall clock: aware UTC datetimes for results and events."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
