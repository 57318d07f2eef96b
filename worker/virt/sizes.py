"""Sizes libvirt reports, as the contract carries them."""

from __future__ import annotations

from messages.fields import MAX_SIZE


def reported_size(value: int) -> int:
    """libvirt's sizes are unsigned 64-bit, and its arithmetic can go below zero: a dir pool on a
    tmpfs filled past its limit reported an allocation of 18446744073645719552 (2**64 - 63832064).
    Such a value means nothing, and the contract's sizes stop at 2**63 - 1: it is reported as 0."""
    return value if 0 <= value <= MAX_SIZE else 0
