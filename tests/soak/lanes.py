"""The command mix. A lane owns a few names (volumes, or pools) and sends one command at a time about
them (plus, sometimes, a `job.cancel` of that command), choosing the next one from the model and its
own seeded random generator once the last one's result is in; many lanes run at once, so the worker
sees concurrent work on different volumes and pools while every name's history stays a sequence
the model can follow.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.soak.model import ABSENT, Model

MiB = 1024 * 1024
KiB = 1024


@dataclass
class Command:
    """One message to send. `expect` says what a correct answer looks like: `result` (any terminal
    result but an internal error), `rejected` (bad input: rejected or failed, never internal),
    `fail:<code>` (failed with that code), or `undecodable` (a rejected result keyed by its message
    id, and a dead letter)."""

    host: str
    op: str | None
    args: dict[str, Any] | None
    lane: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    body: bytes | None = None
    expect: str = "result"
    on_result: Callable[[dict], None] | None = None
    #: seconds after the first send when the identical message is sent again (a duplicate)
    resend_after: float | None = None

    def encoded(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps({"id": self.id, "op": self.op, "args": self.args}, separators=(",", ":")).encode()


def _error_code(result: dict) -> str | None:
    return (result.get("error") or {}).get("code")


@dataclass
class Context:
    model: Model
    surprises: list[str]          # reads that saw a value the model did not allow
    duplicate_rate: float = 0.1


class Lane:
    name: str
    host: str

    def __init__(self, name: str, host: str, rng: random.Random, context: Context):
        self.name = name
        self.host = host
        self.rng = rng
        self.context = context

    @property
    def model(self) -> Model:
        return self.context.model

    def next(self) -> list[Command]:
        raise NotImplementedError

    def command(self, op: str, args: dict[str, Any], on_result: Callable[[dict], None] | None = None,
                **extra: Any) -> Command:
        command = Command(host=self.host, op=op, args=args, lane=self.name, on_result=on_result, **extra)
        if self.rng.random() < self.context.duplicate_rate:
            command.resend_after = self.rng.uniform(0.0, 2.0)
        return command

    def observe(self, key, value, what: str) -> None:
        if not self.model.observed(key, value):
            self.context.surprises.append(f"{what}: saw {value!r}")


class VolumeLane(Lane):
    """Volumes `<lane>-v0..` in one pool: create, clone, resize, wipe, upload, download, info, list,
    delete, and cancels of the long ones."""

    def __init__(self, name: str, host: str, rng: random.Random, context: Context, pool: str, transfer: Path,
                 sources: list[Path], volumes: int = 3, sizes: tuple[int, ...] = (1, 2, 4, 8),
                 fully_allocated: bool = False):
        super().__init__(name, host, rng, context)
        self.pool = pool
        self.transfer = transfer
        self.sources = sources
        self.names = [f"{name}-v{i}" for i in range(volumes)]
        self.sizes = sizes
        self.fully_allocated = fully_allocated
        self.formats: dict[str, str] = {}

    def key(self, volume: str) -> tuple:
        return ("vol", self.host, self.pool, volume)

    def _after(self, volume: str, new) -> Callable[[dict], None]:
        def apply(result: dict) -> None:
            self.model.outcome(self.key(volume), new, result["status"], _error_code(result))
        return apply

    def _read(self, volume: str) -> Callable[[dict], None]:
        def apply(result: dict) -> None:
            if result["status"] == "succeeded":
                self.observe(self.key(volume), result["result"]["capacity"], f"volume.info {self.pool}/{volume}")
            elif _error_code(result) == "not_found":
                self.observe(self.key(volume), ABSENT, f"volume.info {self.pool}/{volume}")
        return apply

    def next(self) -> list[Command]:
        volume = self.rng.choice(self.names)
        key = self.key(volume)
        if not self.model.known(key):
            return [self.command("volume.info", {"pool": self.pool, "name": volume}, self._read(volume))]
        capacity = self.model.certain(key)
        if capacity is ABSENT:
            return self._make(volume)
        return self._use(volume, capacity)

    def _make(self, volume: str) -> list[Command]:
        present = [v for v in self.names if self.model.known(self.key(v)) and self.model.certain(self.key(v))]
        if present and not self.fully_allocated and self.rng.random() < 0.3:
            source = self.rng.choice(present)
            capacity = self.model.certain(self.key(source))
            self.formats[volume] = self.formats.get(source, "raw")
            commands = [self.command("volume.clone", {"pool": self.pool, "source": source, "name": volume},
                                     self._after(volume, capacity))]
            return commands + self._maybe_cancel(commands[0])
        capacity = self.rng.choice(self.sizes) * MiB
        fmt = "raw" if self.fully_allocated else self.rng.choice(["raw", "raw", "qcow2"])
        self.formats[volume] = fmt
        args: dict[str, Any] = {"pool": self.pool, "name": volume, "capacity": capacity, "format": fmt}
        if self.fully_allocated:
            args["allocation"] = capacity
        return [self.command("volume.create", args, self._after(volume, capacity))]

    def _use(self, volume: str, capacity: int) -> list[Command]:
        raw = self.formats.get(volume, "raw") == "raw"
        choices = ["info", "delete", "list"]
        if not self.fully_allocated:
            choices += ["resize", "resize", "download", "download"]
            if raw:
                choices += ["wipe", "upload", "upload"]
        what = self.rng.choice(choices)
        base = {"pool": self.pool, "name": volume}
        if what == "info":
            return [self.command("volume.info", base, self._read(volume))]
        if what == "list":
            return [self.command("volume.list", {"pool": self.pool})]
        if what == "delete":
            return [self.command("volume.delete", base, self._after(volume, ABSENT))]
        if what == "resize":
            grown = capacity + self.rng.choice((1, 2)) * MiB
            return [self.command("volume.resize", {**base, "capacity": grown}, self._after(volume, grown))]
        if what == "wipe":
            return [self.command("volume.wipe", {**base, "algorithm": "zero"}, self._after(volume, capacity))]
        if what == "upload":
            source = self.rng.choice([s for s in self.sources if s.stat().st_size <= capacity])
            length = self.rng.choice([None, source.stat().st_size // 2])
            args = {**base, "source": {"path": str(source)}}
            if length:
                args["length"] = length
            command = self.command("volume.upload", args, self._after(volume, capacity))
            return [command] + self._maybe_cancel(command)
        destination = self.transfer / f"{volume}-{uuid.uuid4().hex[:8]}.img"
        command = self.command("volume.download", {**base, "destination": {"path": str(destination)}},
                               self._after(volume, capacity))
        return [command] + self._maybe_cancel(command)

    def _maybe_cancel(self, command: Command) -> list[Command]:
        if self.rng.random() >= 0.3:
            return []
        return [self.command("job.cancel", {"id": command.id})]


class PoolLane(Lane):
    """Dir pools `<lane>-p<n>`, one at a time, through their lifecycle: define (built, maybe started),
    start, stop, refresh, info, a volume made and removed in it, delete (refused while it runs or
    still holds a volume), undefine; then the next."""

    def __init__(self, name: str, host: str, rng: random.Random, context: Context, root: Path):
        super().__init__(name, host, rng, context)
        self.root = root
        self.number = 0

    @property
    def pool(self) -> str:
        return f"{self.name}-p{self.number}"

    def key(self) -> tuple:
        return ("pool", self.host, self.pool)

    def volume_key(self) -> tuple:
        return ("vol", self.host, self.pool, "lv")

    def _after(self, key: tuple, new) -> Callable[[dict], None]:
        def apply(result: dict) -> None:
            self.model.outcome(key, new, result["status"], _error_code(result))
        return apply

    def _read(self, result: dict) -> None:
        if result["status"] == "succeeded":
            self.observe(self.key(), result["result"]["state"], f"pool.info {self.pool}")
        elif _error_code(result) == "not_found":
            self.observe(self.key(), ABSENT, f"pool.info {self.pool}")

    def _undefined(self, result: dict) -> None:
        self._after(self.key(), ABSENT)(result)
        if result["status"] == "succeeded":
            self.number += 1

    def next(self) -> list[Command]:
        key, pool = self.key(), self.pool
        if not self.model.known(key) or not self.model.known(self.volume_key()):
            if not self.model.known(key):
                return [self.command("pool.info", {"name": pool}, self._read)]
            return [self.command("volume.info", {"pool": pool, "name": "lv"}, self._volume_read)]
        state = self.model.certain(key)
        if state is ABSENT:
            start = self.rng.random() < 0.7
            return [self.command("pool.define", {"name": pool, "type": "dir", "target": {"path": str(self.root / pool)},
                                                 "build": True, "start": start},
                                 self._after(key, "running" if start else "inactive"))]
        has_volume = self.model.certain(self.volume_key()) is not ABSENT
        if state == "inactive":
            what = self.rng.choice(["start", "start", "undefine"] if not has_volume else ["start", "delete-full"])
            if what == "start":
                return [self.command("pool.start", {"name": pool}, self._after(key, "running"))]
            if what == "delete-full":  # refused: the directory still holds a volume
                return [self.command("pool.delete", {"name": pool}, self._after(key, "inactive"),
                                     expect="fail:invalid")]
            return [self.command("pool.undefine", {"name": pool}, self._undefined)]
        choices = ["stop", "refresh", "info", "list", "delete-running"]
        choices += ["volume-delete"] if has_volume else ["volume-create"]
        what = self.rng.choice(choices)
        if what == "stop":
            return [self.command("pool.stop", {"name": pool}, self._after(key, "inactive"))]
        if what == "refresh":
            return [self.command("pool.refresh", {"name": pool})]
        if what == "info":
            return [self.command("pool.info", {"name": pool}, self._read)]
        if what == "list":
            return [self.command("pool.list", {})]
        if what == "delete-running":  # refused: a running pool's storage is not deleted
            return [self.command("pool.delete", {"name": pool}, self._after(key, "running"), expect="fail:invalid")]
        if what == "volume-create":
            return [self.command("volume.create", {"pool": pool, "name": "lv", "capacity": MiB, "format": "raw"},
                                 self._after(self.volume_key(), MiB))]
        return [self.command("volume.delete", {"pool": pool, "name": "lv"}, self._after(self.volume_key(), ABSENT))]

    def _volume_read(self, result: dict) -> None:
        if result["status"] == "succeeded":
            self.observe(self.volume_key(), result["result"]["capacity"], f"volume.info {self.pool}/lv")
        elif _error_code(result) == "not_found":
            self.observe(self.volume_key(), ABSENT, f"volume.info {self.pool}/lv")


class DiskLane(Lane):
    """One volume attached to and detached from a defined (not running) domain's configuration; a
    delete of it while attached is refused `in_use`."""

    TARGET = "vdb"

    def __init__(self, name: str, host: str, rng: random.Random, context: Context, pool: str, domain: str):
        super().__init__(name, host, rng, context)
        self.pool = pool
        self.domain = domain
        self.volume = f"{name}-v0"

    def vkey(self) -> tuple:
        return ("vol", self.host, self.pool, self.volume)

    def dkey(self) -> tuple:
        return ("disk", self.host, self.domain, self.TARGET)

    def _after(self, key: tuple, new) -> Callable[[dict], None]:
        def apply(result: dict) -> None:
            self.model.outcome(key, new, result["status"], _error_code(result))
        return apply

    def next(self) -> list[Command]:
        vkey, dkey = self.vkey(), self.dkey()
        if not self.model.known(vkey):
            return [self.command("volume.info", {"pool": self.pool, "name": self.volume}, self._read)]
        if not self.model.known(dkey):
            return [self.command("volume.info", {"pool": self.pool, "name": self.volume}, self._read)]
        if self.model.certain(vkey) is ABSENT:
            return [self.command("volume.create", {"pool": self.pool, "name": self.volume, "capacity": MiB,
                                                   "format": "raw"}, self._after(vkey, MiB))]
        attached = self.model.certain(dkey) is not ABSENT
        disk = {"domain": self.domain, "target": self.TARGET, "live": False, "config": True}
        if attached:
            if self.rng.random() < 0.25:  # refused: in use by the domain
                return [self.command("volume.delete", {"pool": self.pool, "name": self.volume},
                                     self._after(vkey, ABSENT), expect="fail:in_use")]
            return [self.command("volume.detach", disk, self._after(dkey, ABSENT))]
        return [self.command("volume.attach", {**disk, "pool": self.pool, "name": self.volume},
                             self._after(dkey, self.volume))]

    def _read(self, result: dict) -> None:
        if result["status"] == "succeeded":
            self.observe(self.vkey(), result["result"]["capacity"], f"volume.info {self.pool}/{self.volume}")
            in_use = self.domain in (result["result"].get("in_use_by") or [])
            self.observe(self.dkey(), self.volume if in_use else ABSENT, f"disk {self.domain}/{self.TARGET}")
        elif (result.get("error") or {}).get("code") == "not_found":
            self.observe(self.vkey(), ABSENT, f"volume.info {self.pool}/{self.volume}")


class BadInputLane(Lane):
    """Messages the worker must turn away without harm: no JSON, an unknown op, arguments the models
    refuse, a path outside the allowed roots, a cancel of an unknown id."""

    def __init__(self, name: str, host: str, rng: random.Random, context: Context, pool: str):
        super().__init__(name, host, rng, context)
        self.pool = pool

    def next(self) -> list[Command]:
        what = self.rng.choice(["not-json", "unknown-op", "negative", "outside", "unknown-field", "cancel-unknown"])
        if what == "not-json":
            command = Command(host=self.host, op=None, args=None, lane=self.name, expect="undecodable")
            command.body = b"{not json " + command.id.encode()
            return [command]
        if what == "cancel-unknown":
            return [self.command("job.cancel", {"id": f"nothing-{uuid.uuid4().hex[:8]}"}, expect="fail:not_found")]
        op, args = {
            "unknown-op": ("volume.explode", {"pool": self.pool}),
            "negative": ("volume.create", {"pool": self.pool, "name": "bad", "capacity": -1}),
            "outside": ("volume.download", {"pool": self.pool, "name": "bad", "destination": {"path": "/etc/soak"}}),
            "unknown-field": ("pool.info", {"name": self.pool, "colour": "blue"}),
        }[what]
        return [self.command(op, args, expect="rejected")]
