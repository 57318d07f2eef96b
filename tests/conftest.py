"""Fixtures shared by unit and integration tests.

Integration tests talk to the real RabbitMQ and the real libvirtd. Where one cannot be reached the
test is skipped on a developer's machine and fails when CI is set: in CI a skipped test is a failure.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

LIBVIRT_URI = os.environ.get("TEST_LIBVIRT_URI", "qemu:///system")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


# Property tests (hypothesis): in CI a fixed, derandomized run, so a red build is reproducible and
# a green one does not depend on luck; on a developer's machine a random run of the same size, which
# over many runs searches further. HYPOTHESIS_PROFILE picks one by name (e.g. "thorough" for a long
# search before a release). Deadlines are generous: the machine is shared and a first example pays
# for imports and caches.
settings.register_profile("ci", max_examples=100, deadline=2000, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=2000, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def require(condition: bool, why: str) -> None:
    """Skip (developer machine) or fail (CI) when a real service the test needs is missing."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: a missing service fails the test)")
    pytest.skip(why)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def libvirt_conn():
    import libvirt

    from worker.virt.event_loop import ensure_event_loop

    ensure_event_loop()
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as exc:
        require(False, f"libvirtd is not reachable at {LIBVIRT_URI}: {exc}")
    yield conn
    conn.close()
