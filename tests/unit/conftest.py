"""Fixtures shared by the unit tests."""

from __future__ import annotations

import libvirt
import pytest

TEST_DRIVER = "test:///default"  # libvirt's in-process driver: its state is shared within the process


@pytest.fixture
def conn():
    connection = libvirt.open(TEST_DRIVER)
    yield connection
    connection.close()


class FakeClock:
    """A clock a test moves by hand (`clock.now += 1.5`), for code that takes `clock=`."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
