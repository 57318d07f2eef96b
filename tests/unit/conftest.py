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
