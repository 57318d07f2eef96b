"""Settings (docs/contract.md "Running the worker"): flags, then STORAGE_WORKER_* environment
variables, then a TOML file, then defaults."""

from __future__ import annotations

import contextvars
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from messages.brokers import broker_urls
from messages.fields import NAME_PATTERN, AbsolutePath
from messages.sizes import parse_size
from messages.topology import Topology

ENV_PREFIX = "STORAGE_WORKER_"
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_file", default=None)


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid",
                                      hide_input_in_errors=True,  # an input may be a URL with a password
                                      frozen=True)

    host_id: Annotated[str, Field(pattern=NAME_PATTERN, max_length=255)] = Field(default_factory=_short_hostname)
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/%2F")
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    amqp_heartbeat: int = Field(10, ge=0, description="seconds; 0 turns heartbeats off")
    libvirt_uri: str = "qemu:///system"
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)] = "storage"
    state_dir: Path = Path("/var/lib/storage-worker")
    concurrency: int = Field(8, ge=1, le=256)
    queue_type: Literal["quorum", "classic"] = "quorum"
    quorum_group_size: int | None = Field(None, ge=1, description="members of each quorum queue the worker "
                                                                  "declares; none: every node of the cluster")
    delivery_limit: int = Field(5, ge=1, description="redeliveries before a command is dead-lettered (quorum)")
    single_active_consumer: bool = True
    allowed_roots: list[AbsolutePath] = ["/var/lib/libvirt/images"]
    url_allowlist: list[str] = []
    reconcile_interval: float = Field(30, gt=0)
    capacity_low: float = Field(0.1, ge=0, le=1)
    metrics_port: int = Field(9464, ge=0, le=65535)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    policy_file: Path | None = None
    retry_attempts: int = Field(5, ge=1, description="tries of an operation that meets transient errors")
    retry_max_seconds: float = Field(60, gt=0, description="total time an operation may spend retrying")
    busy_wait: float = Field(600, ge=0, description="seconds an operation waits out libvirt being busy with "
                                                    "another job on the same pool or volume")
    libvirt_wait: float = Field(60, ge=0, description="seconds a command waits for an unreachable libvirt "
                                                       "(never past its deadline)")
    own_after: float = Field(60, ge=0, description="seconds a command may hold its delivery unacknowledged "
                                                   "before the journal takes custody of it")
    journal_retention: float = Field(7 * 86400, gt=0, description="seconds finished commands are kept in the "
                                                                  "journal (repeats of their ids are answered)")
    journal_max_rows: int = Field(1_000_000, ge=1000, description="finished commands the journal keeps at most")
    event_buffer: int = Field(10_000, ge=1, description="events kept while the broker is unreachable")
    event_stream_max_age: Annotated[str, Field(pattern=r"^[1-9][0-9]*[YMDhms]$")] = Field(
        "7D", description="how long the event stream keeps events: RabbitMQ's x-max-age, a number and a unit "
                          "(Y, M, D, h, m, s), e.g. 7D or 12h")
    event_stream_max_bytes: int = Field(2**30, ge=1, description="bytes the event stream keeps at most "
                                                                 "(RabbitMQ's x-max-length-bytes); 512M, 2G accepted")
    shutdown_grace: float = Field(30, ge=0, description="seconds in-flight operations get to finish on SIGTERM")

    @field_validator("amqp_url", mode="before")
    @classmethod
    def _node_list(cls, value: Any) -> Any:
        """A list of URLs (a TOML array in the file) is kept as its JSON form."""
        return json.dumps(value) if isinstance(value, list) else value

    @field_validator("amqp_url")
    @classmethod
    def _broker_nodes(cls, value: SecretStr) -> SecretStr:
        """One URL, URLs separated by ';', or a JSON list of URLs: checked here (the message names
        the problem without the password)."""
        broker_urls(value.get_secret_value())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("event_stream_max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.prefix, host=self.host_id)

    @property
    def prefetch(self) -> int:
        """Room for every executor thread plus as many waiting commands, so that control commands
        such as job.cancel still arrive while every thread is busy."""
        return self.concurrency * 2


def load_settings(flags: dict[str, Any] | None = None, config_file: Path | str | None = None) -> Settings:
    """Settings with flags (non-None values) over the environment over the TOML file over defaults.

    The file comes from `config_file`, else from STORAGE_WORKER_CONFIG."""
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**{k: v for k, v in (flags or {}).items() if v is not None})
    finally:
        _config_file.reset(token)
