"""worker.config.load_settings: flags > STORAGE_WORKER_* environment > TOML file > defaults."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from worker.config import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("STORAGE_WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text('host_id = "from-file"\n'
                    'prefix = "fileprefix"\n'
                    'concurrency = 3\n'
                    'libvirt_uri = "test:///file"\n'
                    'allowed_roots = ["/srv/file"]\n')
    return path


def test_defaults(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "kvm-07.lab.example.com")
    s = load_settings()
    assert s.host_id == "kvm-07"
    assert s.prefix == "storage" and s.libvirt_uri == "qemu:///system"
    assert s.concurrency == 8 and s.queue_type == "quorum"
    assert s.allowed_roots == ["/var/lib/libvirt/images"] and s.url_allowlist == []
    assert s.amqp_url.get_secret_value() == "amqp://guest:guest@localhost:5672/%2F"
    assert (s.log_format, s.log_level) == ("json", "INFO")


def test_the_file_overrides_defaults(toml_file):
    s = load_settings(config_file=toml_file)
    assert (s.host_id, s.prefix, s.concurrency, s.libvirt_uri) == ("from-file", "fileprefix", 3, "test:///file")
    assert s.allowed_roots == ["/srv/file"]
    assert s.queue_type == "quorum"  # not in the file: the default


def test_the_environment_overrides_the_file(toml_file, monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_PREFIX", "envprefix")
    monkeypatch.setenv("STORAGE_WORKER_CONCURRENCY", "5")
    s = load_settings(config_file=toml_file)
    assert (s.prefix, s.concurrency) == ("envprefix", 5)
    assert s.host_id == "from-file"


def test_flags_override_the_environment_and_none_flags_are_ignored(toml_file, monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_PREFIX", "envprefix")
    monkeypatch.setenv("STORAGE_WORKER_HOST_ID", "env-host")
    s = load_settings({"prefix": "flagprefix", "host_id": None, "libvirt_uri": None}, toml_file)
    assert s.prefix == "flagprefix"
    assert s.host_id == "env-host"  # flag not given: the environment wins over the file
    assert s.libvirt_uri == "test:///file"


def test_the_config_file_can_come_from_the_environment(toml_file, monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_CONFIG", str(toml_file))
    assert load_settings().host_id == "from-file"


def test_allowed_roots_from_the_environment_is_a_json_list(monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_ALLOWED_ROOTS", '["/srv/a", "/srv/b"]')
    monkeypatch.setenv("STORAGE_WORKER_URL_ALLOWLIST", '["https://images.example.com/"]')
    s = load_settings()
    assert s.allowed_roots == ["/srv/a", "/srv/b"]
    assert s.url_allowlist == ["https://images.example.com/"]


def test_a_relative_allowed_root_is_refused(monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_ALLOWED_ROOTS", '["images"]')
    with pytest.raises(ValidationError):
        load_settings()


def test_a_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(FileNotFoundError, match="nowhere.toml"):
        load_settings(config_file=missing)


def test_a_missing_config_file_from_the_environment_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(FileNotFoundError, match="gone.toml"):
        load_settings()


def test_an_unknown_key_in_the_file_is_refused(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('concurency = 3\n')
    with pytest.raises(ValidationError, match="concurency"):
        load_settings(config_file=path)


def test_the_file_is_not_remembered_by_later_loads(toml_file):
    assert load_settings(config_file=toml_file).prefix == "fileprefix"
    assert load_settings().prefix == "storage"


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_prefetch_is_twice_the_concurrency(concurrency):
    assert load_settings({"concurrency": concurrency}).prefetch == 2 * concurrency


def test_the_broker_password_is_not_shown():
    s = load_settings({"amqp_url": "amqp://admin:s3cr3t-pw@broker:5672/%2F"})
    assert "s3cr3t-pw" not in repr(s) and "s3cr3t-pw" not in str(s)
    assert "s3cr3t-pw" not in s.model_dump_json()
    assert s.amqp_url.get_secret_value() == "amqp://admin:s3cr3t-pw@broker:5672/%2F"


def test_log_level_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("STORAGE_WORKER_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_topology_follows_prefix_and_host():
    t = load_settings({"prefix": "st", "host_id": "kvm-01"}).topology
    assert (t.command_queue, t.commands_exchange) == ("st.commands.kvm-01", "st.commands")


def test_event_stream_retention(monkeypatch):
    s = load_settings()
    assert (s.event_stream_max_age, s.event_stream_max_bytes) == ("7D", 2**30)
    monkeypatch.setenv("STORAGE_WORKER_EVENT_STREAM_MAX_AGE", "12h")
    monkeypatch.setenv("STORAGE_WORKER_EVENT_STREAM_MAX_BYTES", "512M")
    s = load_settings()
    assert (s.event_stream_max_age, s.event_stream_max_bytes) == ("12h", 512 * 2**20)


@pytest.mark.parametrize("name, value", [("EVENT_STREAM_MAX_AGE", "7 days"), ("EVENT_STREAM_MAX_AGE", "0D"),
                                         ("EVENT_STREAM_MAX_AGE", "7d"), ("EVENT_STREAM_MAX_BYTES", "0"),
                                         ("EVENT_STREAM_MAX_BYTES", "lots")])
def test_bad_event_stream_retention_is_refused_naming_the_value(monkeypatch, name, value):
    monkeypatch.setenv(f"STORAGE_WORKER_{name}", value)
    with pytest.raises((ValidationError, ValueError)) as raised:
        load_settings()
    assert name.lower() in str(raised.value) or repr(value) in str(raised.value)
