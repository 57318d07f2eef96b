"""compose/: the docker compose setup agrees with the worker's settings (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from worker.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def worker_env(services) -> dict[str, str]:
    return environment(services["worker"])


def environment(service: dict) -> dict[str, str]:
    """Compose accepts a mapping or a list of NAME=value."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def duration(text: str | int | float) -> float:
    """Seconds in a compose duration: 45s, 1m30s, 2m, 1h, 500ms, 1.5s (a bare number is seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"{text!r} is not a compose duration")
    return sum(float(number) * units[unit] for number, unit in parts)


def test_duration_parsing():
    assert duration("45s") == 45
    assert duration("1m30s") == 90
    assert duration("2m") == 120
    assert duration("1h2m3s") == 3723
    assert duration("1500ms") == 1.5
    assert duration(10) == 10
    with pytest.raises(ValueError):
        duration("soon")


def published_ports(service: dict) -> set[int]:
    """Container ports a service publishes: "5672", "5672:5672", "127.0.0.1:15672:15672/tcp", or long form."""
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def volume_sources(service: dict) -> dict[str, str]:
    """container path -> named volume (or host path) of a service's volumes."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts[entry["target"]] = entry.get("source", "")
        else:
            source, target = str(entry).split(":")[:2]
            mounts[target] = source
    return mounts


def test_the_four_services_exist(services):
    assert {"rabbitmq", "libvirtd", "worker", "prometheus"} <= set(services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_worker_environment_names_real_settings(worker_env):
    names = [name for name in worker_env if name.startswith(ENV_PREFIX)]
    assert names, "the worker service sets no STORAGE_WORKER_* variable"
    unknown = sorted(name for name in names if name[len(ENV_PREFIX):].lower() not in Settings.model_fields)
    assert not unknown, f"not settings of worker.config.Settings: {unknown}"
    for required in ("HOST_ID", "AMQP_URL", "LIBVIRT_URI", "STATE_DIR", "ALLOWED_ROOTS", "METRICS_PORT",
                     "LOG_FORMAT"):
        assert ENV_PREFIX + required in worker_env, f"{ENV_PREFIX}{required} is not set for the worker"


def test_worker_environment_makes_valid_settings(worker_env, monkeypatch):
    """Settings read from exactly that environment validate (types, patterns, JSON lists)."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.metrics_port == int(worker_env[ENV_PREFIX + "METRICS_PORT"])
    assert settings.libvirt_uri == "qemu:///system"


PROMETHEUS_CONFIG_TARGET = "/etc/prometheus/prometheus.yml"


def mounted_file(service: dict, target: str) -> Path:
    """The file of this repository that a service mounts at `target`."""
    source = volume_sources(service).get(target, "")
    assert source.startswith("."), f"nothing of the repository is mounted at {target}"
    return (COMPOSE_DIR / source).resolve()


@pytest.fixture(scope="module")
def prometheus_config(services) -> dict:
    return yaml.safe_load(mounted_file(services["prometheus"], PROMETHEUS_CONFIG_TARGET).read_text())


def scrape_job(config: dict, job_name: str) -> dict:
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert job_name in jobs, f"Prometheus has no scrape job {job_name}: {sorted(jobs)}"
    return jobs[job_name]


def prometheus_targets(config: dict) -> list[str]:
    return [target for job in config["scrape_configs"] for static in job.get("static_configs", [])
            for target in static["targets"]]


def test_prometheus_scrapes_the_worker_metrics_port(services, worker_env, prometheus_config):
    port = int(worker_env.get(ENV_PREFIX + "METRICS_PORT", Settings.model_fields["metrics_port"].default))
    assert port != 0, "metrics are turned off, nothing to scrape"
    assert f"worker:{port}" in prometheus_targets(prometheus_config)
    assert mounted_file(services["prometheus"], PROMETHEUS_CONFIG_TARGET) == COMPOSE_DIR / "prometheus" / "prometheus.yml"
    assert 9090 in published_ports(services["prometheus"])


def test_prometheus_loads_the_alert_rules(services, prometheus_config):
    """Every rule file the config names is mounted beside it in the container (relative names are
    relative to the config file), from the file beside it in compose/prometheus/ (so promtool
    check config finds it here too)."""
    rule_files = prometheus_config.get("rule_files") or []
    assert rule_files, "Prometheus loads no rules"
    config_dir = Path(PROMETHEUS_CONFIG_TARGET).parent
    local_dir = mounted_file(services["prometheus"], PROMETHEUS_CONFIG_TARGET).parent
    for name in rule_files:
        assert "*" not in name
        in_container = config_dir / name
        assert mounted_file(services["prometheus"], str(in_container)) == (local_dir / name).resolve()
        assert (local_dir / name).is_file()
    assert (COMPOSE_DIR / "prometheus" / "alerts.yml").resolve() in \
        {mounted_file(services["prometheus"], str(config_dir / name)) for name in rule_files}
    assert yaml.safe_load((COMPOSE_DIR / "prometheus" / "alerts.yml").read_text())["groups"]


def test_prometheus_labels_the_worker_target_with_its_host_id(worker_env, prometheus_config):
    """The alerts name a worker by the target's `host` label, and select it by the job name."""
    job = scrape_job(prometheus_config, "storage-worker")
    hosts = {static.get("labels", {}).get("host") for static in job["static_configs"]}
    assert hosts == {worker_env[ENV_PREFIX + "HOST_ID"]}
    alerts = (COMPOSE_DIR / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="storage-worker"}' in alerts


def test_prometheus_scrapes_the_dead_letter_depth_from_rabbitmq(services, worker_env, prometheus_config):
    """DeadLettersWaiting reads rabbitmq_detailed_queue_messages: RabbitMQ's /metrics/detailed
    endpoint (port 15692, the rabbitmq_prometheus plugin), asked for the queue_coarse_metrics family,
    about the worker's dead-letter queue."""
    from messages.topology import Topology

    job = scrape_job(prometheus_config, "rabbitmq")
    assert job["metrics_path"] == "/metrics/detailed"
    assert "queue_coarse_metrics" in job["params"]["family"]
    assert prometheus_targets({"scrape_configs": [job]}) == ["rabbitmq:15692"]
    assert "15692" in [str(port) for port in services["rabbitmq"].get("expose", [])]
    prefix = worker_env.get(ENV_PREFIX + "PREFIX", Settings.model_fields["prefix"].default)
    dead = Topology(prefix=prefix, host=worker_env[ENV_PREFIX + "HOST_ID"]).dead_letter_queue
    alerts = (COMPOSE_DIR / "prometheus" / "alerts.yml").read_text()
    assert f'rabbitmq_detailed_queue_messages{{queue="{dead}"}}' in alerts


def test_worker_healthcheck_asks_healthz_on_the_metrics_port(services, worker_env):
    port = int(worker_env[ENV_PREFIX + "METRICS_PORT"])
    test = services["worker"]["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    urls = re.findall(r"https?://[^\s'\"]+", text)
    assert urls, f"no URL in the worker's healthcheck: {text}"
    url = urlsplit(urls[0])
    assert url.port == port and url.path == "/healthz"


def test_amqp_url_points_at_the_rabbitmq_service(services, worker_env):
    url = urlsplit(worker_env[ENV_PREFIX + "AMQP_URL"])
    assert url.scheme == "amqp"
    assert url.hostname == "rabbitmq" and url.hostname in services
    assert url.port == 5672
    assert 5672 in published_ports(services["rabbitmq"])
    assert 15672 in published_ports(services["rabbitmq"])


def test_stop_grace_period_outlasts_shutdown_grace(services, worker_env):
    grace = float(worker_env.get(ENV_PREFIX + "SHUTDOWN_GRACE", Settings.model_fields["shutdown_grace"].default))
    stop = services["worker"].get("stop_grace_period")
    assert stop is not None, "the worker has no stop_grace_period (compose's default is 10 s)"
    assert duration(stop) > grace


def test_dependencies_exist_and_have_healthchecks(services):
    worker_deps = services["worker"]["depends_on"]
    assert set(worker_deps) >= {"rabbitmq", "libvirtd"}
    for name in ("rabbitmq", "libvirtd"):
        assert worker_deps[name]["condition"] == "service_healthy"
    for service_name, service in services.items():
        deps = service.get("depends_on") or {}
        for dependency in deps:
            assert dependency in services, f"{service_name} depends on unknown service {dependency}"
            assert "test" in (services[dependency].get("healthcheck") or {}), \
                f"{service_name} depends on {dependency}, which has no healthcheck"


def test_healthchecks(services):
    assert services["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert services["libvirtd"]["healthcheck"]["test"] == ["CMD", "virsh", "-c", "qemu:///system", "uri"]


def test_libvirtd_is_privileged_and_shares_its_socket_and_storage(compose, services):
    libvirtd, worker = services["libvirtd"], services["worker"]
    assert libvirtd.get("privileged") is True
    libvirtd_mounts, worker_mounts = volume_sources(libvirtd), volume_sources(worker)
    for path in ("/var/run/libvirt", "/var/lib/libvirt"):
        assert path in libvirtd_mounts and path in worker_mounts, f"{path} is not mounted in both"
        assert libvirtd_mounts[path] == worker_mounts[path], f"{path} is not the same volume"
        assert libvirtd_mounts[path] in (compose.get("volumes") or {}), f"{path} is not a named volume"
    state_dir = environment(worker)[ENV_PREFIX + "STATE_DIR"]
    assert worker_mounts.get(state_dir) in (compose.get("volumes") or {}), "the state dir is not a named volume"


def test_worker_allowed_roots_lie_in_the_shared_libvirt_storage(worker_env):
    import json

    roots = json.loads(worker_env[ENV_PREFIX + "ALLOWED_ROOTS"])
    assert roots and all(Path(root).is_relative_to("/var/lib/libvirt") for root in roots)


def dockerfile(service: dict) -> Path:
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_DIR / build["context"]).resolve()
    return context / build.get("dockerfile", "Dockerfile")


def test_dockerfiles_exist_and_install_what_is_needed(services):
    worker_build = services["worker"]["build"]
    assert (COMPOSE_DIR / worker_build["context"]).resolve() == ROOT, "the worker is built from the repo root"
    worker_file = dockerfile(services["worker"])
    assert worker_file == COMPOSE_DIR / "worker" / "Dockerfile" and worker_file.is_file()
    text = worker_file.read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm", text, re.M)
    assert "libvirt-dev" in text and "pkg-config" in text and "gcc" in text
    assert re.search(r"pip install .*\.", text)
    assert "storage-worker" in text and "run" in text
    for copied in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M):
        for source in copied.split():
            assert (ROOT / source).exists(), f"the worker Dockerfile copies {source}, which does not exist"
    command = services["worker"].get("command")
    assert command in (["storage-worker", "run"], "storage-worker run")

    libvirtd_file = dockerfile(services["libvirtd"])
    assert libvirtd_file.is_file()
    text = libvirtd_file.read_text()
    assert re.search(r"^FROM debian:12", text, re.M) or re.search(r"^FROM debian:bookworm", text, re.M)
    for package in ("libvirt-daemon-system", "qemu-utils", "qemu-system-x86", "scrub"):
        assert package in text
    for copied in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, re.M):
        assert (libvirtd_file.parent / copied).exists(), f"the libvirtd Dockerfile copies missing {copied}"
    entrypoint = (libvirtd_file.parent / "entrypoint.sh").read_text()
    assert "virtlogd" in entrypoint and re.search(r"^exec libvirtd\s*$", entrypoint, re.M), \
        "libvirtd must run in the foreground (no -d) as the container's main process"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for target, source in volume_sources(service).items():
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source} at {target}"


GRAFANA_PROVISIONING = "/etc/grafana/provisioning"


def test_grafana_provisions_the_prometheus_data_source(services, prometheus_config):
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:10.")
    assert 3000 in published_ports(grafana)
    assert "prometheus" in grafana["depends_on"]
    provisioning = mounted_file(grafana, GRAFANA_PROVISIONING)
    assert provisioning == COMPOSE_DIR / "grafana" / "provisioning"
    sources = [source for path in sorted((provisioning / "datasources").glob("*.yml"))
               for source in yaml.safe_load(path.read_text())["datasources"]]
    prometheus = [source for source in sources if source["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0].get("isDefault") is True
    url = urlsplit(prometheus[0]["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert url.port in published_ports(services["prometheus"])
    assert prometheus[0]["jsonData"]["timeInterval"] == prometheus_config["global"]["scrape_interval"], \
        "Grafana's idea of the scrape interval ($__rate_interval) differs from Prometheus's"


def test_grafana_provisions_the_dashboards_directory(services):
    grafana = services["grafana"]
    provisioning = mounted_file(grafana, GRAFANA_PROVISIONING)
    providers = [provider for path in sorted((provisioning / "dashboards").glob("*.yml"))
                 for provider in yaml.safe_load(path.read_text())["providers"]]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    directory = mounted_file(grafana, providers[0]["options"]["path"])
    assert directory == COMPOSE_DIR / "grafana" / "dashboards"
    assert (directory / "storage-worker.json").is_file()
