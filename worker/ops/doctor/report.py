"""What a check returns (`Check`: ok, warn, fail or skip, with a fix for warn and fail), how the
report is printed (aligned lines or JSON) and the exit code it gives."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

# The script that starts RabbitMQ and libvirtd on a development machine; fixes name it.
START_SERVICES = "scripts/dev-services"


class Status(str, Enum):
    ok = "ok"
    warn = "warn"
    fail = "fail"
    skip = "skip"


_LABELS = {Status.ok: "ok", Status.warn: "WARN", Status.fail: "FAIL", Status.skip: "skip"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.ok, detail)


def warn(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, Status.warn, detail, fix)


def fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name, Status.fail, detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, Status.skip, detail)


def format_line(check: Check, width: int = 13) -> str:
    line = f"{_LABELS[check.status]:<4} {check.name:<{width}} {check.detail}"
    if check.fix and check.status in (Status.warn, Status.fail):
        line += f" → fix: {check.fix}"
    return line


def format_report(checks: list[Check]) -> str:
    width = max([13, *(len(c.name) for c in checks)])
    return "\n".join(format_line(c, width) for c in checks)


def format_json(checks: list[Check]) -> str:
    return json.dumps({"ok": exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]}, indent=2)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == Status.fail for c in checks) else 0
