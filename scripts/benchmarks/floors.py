"""Floors: libvirt-python called directly, and bare pika request/reply."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.common import Requester, percentile


def libvirt_volume_info(pool, name: str, count: int) -> list[float]:
    """What volume.info costs libvirt itself: a lookup and the volume's XML."""
    took = []
    for _ in range(count):
        began = time.perf_counter()
        pool.handle.storageVolLookupByName(name).XMLDesc(0)
        took.append(time.perf_counter() - began)
    return took


def libvirt_create_delete(pool, count: int) -> list[float]:
    took = []
    for index in range(count):
        began = time.perf_counter()
        volume = pool.volume(f"floor-{index}.raw", 2**20)
        volume.delete(0)
        took.append(time.perf_counter() - began)
    return took


class BarePika:
    """A replier process and a requester in this process, on a queue of their own."""

    def __init__(self, prefetch: int, volume: tuple[str, str] | None = None):
        """`volume` (pool, name): the replier reads it from libvirt before each reply."""
        self.queue = f"bench-floor-{uuid.uuid4().hex[:8]}"
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("replier.py")), self.queue,
                                         str(prefetch), *(volume or ())], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"
        self.requester = Requester("", self.queue)

    def bodies(self, count: int) -> list[tuple[str, bytes]]:
        return [(str(uuid.uuid4()), b'{"id": "x", "op": "volume.info", "args": {}}') for _ in range(count)]

    def serial(self, count: int) -> list[float]:
        return self.requester.serial(self.bodies(count))

    def pipelined(self, count: int, in_flight: int) -> float:
        return self.requester.pipelined(self.bodies(count), in_flight)

    def close(self) -> None:
        self.requester.channel.queue_delete(self.queue)
        self.requester.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def p50_p99(values: list[float]) -> tuple[float, float]:
    return percentile(values, 0.5), percentile(values, 0.99)
