"""The state one doctor run threads through its checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.ops.doctor.masking import mask_url, scrub


@dataclass
class Context:
    """What the checks share: the settings, and the connections earlier checks opened."""

    settings: Any
    broker: Any = None            # pika.BlockingConnection once the broker check succeeded
    broker_parameters: Any = None
    libvirt: Any = None           # libvirt.virConnect once the libvirt check succeeded
    state_dir_ok: bool = True     # false once the state_dir check failed
    secrets: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.amqp_url.get_secret_value()

    @property
    def shown_url(self) -> str:
        return mask_url(self.url)

    def clean(self, text: Any) -> str:
        return scrub(str(text), self.secrets)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
        self.cleanups.clear()
