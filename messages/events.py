"""State-change events (docs/contract.md "Events"): CloudEvents 1.0 in structured mode."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Literal

from pydantic import Field, field_serializer

from messages.fields import Size, Strict
from messages.objects import PoolObject, VolumeObject

CONTENT_TYPE = "application/cloudevents+json"


class EventType(str, Enum):
    pool_defined = "storage.pool.defined"
    pool_undefined = "storage.pool.undefined"
    pool_started = "storage.pool.started"
    pool_stopped = "storage.pool.stopped"
    pool_built = "storage.pool.built"
    pool_deleted = "storage.pool.deleted"
    pool_refreshed = "storage.pool.refreshed"
    volume_created = "storage.volume.created"
    volume_deleted = "storage.volume.deleted"
    volume_resized = "storage.volume.resized"
    volume_wiped = "storage.volume.wiped"
    volume_uploaded = "storage.volume.uploaded"
    volume_attached = "storage.volume.attached"
    volume_detached = "storage.volume.detached"
    pool_capacity_low = "storage.pool.capacity.low"
    pool_capacity_ok = "storage.pool.capacity.ok"
    job_progress = "storage.job.progress"
    worker_online = "storage.worker.online"
    worker_offline = "storage.worker.offline"
    libvirt_disconnected = "storage.worker.libvirt.disconnected"
    libvirt_reconnected = "storage.worker.libvirt.reconnected"

    @property
    def suffix(self) -> str:
        """Routing-key suffix: the type without its `storage.` prefix."""
        return self.value.removeprefix("storage.")


class PoolEventData(Strict):
    pool: PoolObject


class DiskRef(Strict):
    domain: str
    target: str


class VolumeEventData(Strict):
    pool: str
    volume: VolumeObject
    origin: Literal["command", "external"]
    disk: DiskRef | None = Field(None, description="The guest disk, for attached/detached")


class CapacityEventData(Strict):
    pool: PoolObject
    threshold: float = Field(description="The configured available/capacity fraction")


class JobProgressData(Strict):
    id: str
    op: str
    bytes_done: Size
    bytes_total: Size
    rate: float = Field(description="bytes per second over the last interval")


class WorkerEventData(Strict):
    host_id: str
    hostname: str
    worker_version: str
    libvirt_uri: str
    reason: str | None = None


DATA_MODELS: dict[EventType, type[Strict]] = {
    **{t: PoolEventData for t in EventType if t.value.startswith("storage.pool.")
       and not t.value.startswith("storage.pool.capacity.")},
    **{t: VolumeEventData for t in EventType if t.value.startswith("storage.volume.")},
    EventType.pool_capacity_low: CapacityEventData,
    EventType.pool_capacity_ok: CapacityEventData,
    EventType.job_progress: JobProgressData,
    **{t: WorkerEventData for t in EventType if t.value.startswith("storage.worker.")},
}


class CloudEvent(Strict):
    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = Field(description="/storage-worker/<host>")
    type: EventType
    subject: str | None = Field(None, description="e.g. pools/images or pools/images/volumes/vm1.qcow2")
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    host: str
    sequence: str = Field(description="Per-worker-process integer, increasing in publish order")
    incarnation: str | None = Field(None, description="The worker process that numbered `sequence`: a host "
                                    "with a hot standby runs two, each counting on its own")
    commandid: str | None = None
    data: dict

    @field_serializer("time")
    def _millisecond_utc(self, value: datetime) -> str:
        text = value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")

    def routing_key(self) -> str:
        return f"{self.host}.{self.type.suffix}"
