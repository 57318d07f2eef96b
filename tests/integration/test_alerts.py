"""The alert rules and the dashboard against a real worker: a real Prometheus (Debian's
/usr/bin/prometheus) scrapes a real worker and evaluates the shipped rules, and every metric name
the rules and the dashboard read is one the worker exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require
from tests.integration.conftest import ok, remove_pools, wait_for
from tests.integration.test_operability import free_port, get
from tests.metric_names import (ALERTS_FILE, alert_expressions, dashboard_expressions, dashboard_files,
                                metric_names)

pytestmark = pytest.mark.integration

# Names the rules and the dashboard read that the worker does not export, and who does.
EXTERNAL_METRICS = {
    "up",                                # Prometheus: 1 when the last scrape of a target worked
    "rabbitmq_detailed_queue_messages",  # RabbitMQ's rabbitmq_prometheus plugin, /metrics/detailed
                                         # ?family=queue_coarse_metrics: the dead-letter queue's depth
}

# The suffixes a family's samples get in the text exposition, by type.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "stateset": ("",), "unknown": ("",)}

POOL_FOR = "4s"  # PoolCapacityLow's `for:` in the test's copy of the rules (10m as shipped)


def exported_names(exposition: str) -> set[str]:
    """Every name a sample of this exposition has or could have: a labelled family shows no sample
    before its first child exists, but its HELP and TYPE lines are there."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


# ---- a small file system for a pool --------------------------------------------------------------

@pytest.fixture
def small_filesystem(tmp_path) -> Iterator[Callable[[Path, int], Path]]:
    """mount(path, mib): a fresh ext4 file system of `mib` MiB on a loop device, mounted on `path`
    (no blocks reserved for root, so libvirt's available is all that is free). Unmounted and the
    loop device detached afterwards, whatever happened."""
    require(shutil.which("losetup") is not None and shutil.which("mkfs.ext4") is not None,
            "losetup and mkfs.ext4 are needed for a small file system")
    mounted: list[tuple[Path, str]] = []
    devices: list[str] = []

    def mount(path: Path, mib: int) -> Path:
        image = tmp_path / f"fs-{len(devices)}.img"
        with open(image, "wb") as handle:
            handle.truncate(mib * 2**20)
        attached = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
        require(attached.returncode == 0, f"no loop device: {attached.stderr.strip()}")
        device = attached.stdout.strip()
        devices.append(device)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", device], check=True, capture_output=True)
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", device, str(path)], check=True, capture_output=True)
        mounted.append((path, device))
        return path

    yield mount
    for path, _device in reversed(mounted):
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
    for device in reversed(devices):
        subprocess.run(["losetup", "-d", device], capture_output=True)


# ---- a real Prometheus ---------------------------------------------------------------------------

class Prometheus:
    def __init__(self, port: int, process: subprocess.Popen, log: Path):
        self.port = port
        self.process = process
        self.log = log

    def api(self, path: str, **query: str) -> dict:
        url = f"/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        status, body = get(self.port, url)
        assert status == 200, f"{url}: {status} {body}"
        return json.loads(body)["data"]

    def alerts(self, name: str, **labels: str) -> list[dict]:
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"].get("alertname") == name
                and all(alert["labels"].get(key) == value for key, value in labels.items())]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def prometheus(tmp_path) -> Iterator[Callable[..., Prometheus]]:
    """start(target, host, rules_text): Prometheus scraping `target` as job storage-worker (labelled
    `host`) every second and evaluating `rules_text` every second, on a free port of 127.0.0.1."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus is not installed (Debian's prometheus package)")
    started: list[Prometheus] = []

    def start(target: str, host: str, rules_text: str) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        (directory / "data").mkdir(parents=True)
        (directory / "alerts.yml").write_text(rules_text)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                  "rule_files": ["alerts.yml"],
                  "scrape_configs": [{"job_name": "storage-worker",
                                      "static_configs": [{"targets": [target], "labels": {"host": host}}]}]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = directory / "prometheus.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=handle, stderr=subprocess.STDOUT, cwd=directory)
        server = Prometheus(port, process, log)
        started.append(server)

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited {process.returncode}:\n{server.output()}"
            try:
                return get(port, "/-/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, 20, "prometheus to be ready", interval=0.1)
        return server

    yield start
    for server in started:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)


def rules_with_short_pool_for(text: str) -> str:
    """The shipped rules with PoolCapacityLow's `for:` shortened, nothing else changed."""
    document = yaml.safe_load(text)
    rule = next(rule for group in document["groups"] for rule in group["rules"]
                if rule.get("alert") == "PoolCapacityLow")
    assert rule["for"] == "10m", "the shipped pending period changed: look at this test again"
    rule["for"] = POOL_FOR
    return yaml.safe_dump(document, sort_keys=False)


def test_pool_capacity_low_goes_pending_then_firing_on_a_real_prometheus(small_filesystem, make_worker,
                                                                         prometheus, tmp_path):
    started = time.monotonic()
    mount = small_filesystem(tmp_path / "small", 64)
    port = free_port()
    harness = make_worker(metrics_port=port, allowed_roots=[str(mount)], reconcile_interval=2)
    client = harness.client()
    pool = harness.name("pool")
    try:
        ok(client.call("pool.define", {"name": pool, "type": "dir", "target": {"path": str(mount / pool)},
                                       "build": True, "start": True}))
        server = prometheus(f"127.0.0.1:{port}", harness.host, rules_with_short_pool_for(ALERTS_FILE.read_text()))

        # Prometheus has the pool's gauges, and every shipped rule evaluates without an error.
        query = f'storage_worker_pool_available_bytes{{pool="{pool}"}} / storage_worker_pool_capacity_bytes'
        ratio = wait_for(lambda: server.api("query", query=query)["result"], 15, "the pool's gauges in Prometheus")
        assert float(ratio[0]["value"][1]) > 0.5, ratio
        rules = wait_for(lambda: (r := [rule for group in server.api("rules")["groups"] for rule in group["rules"]])
                         and all(rule.get("lastEvaluation", "").startswith("2") and rule["health"] == "ok"
                                 for rule in r) and r, 10, "every rule evaluated")
        assert {rule["name"] for rule in rules} == set(alert_expressions())
        assert not server.alerts("PoolCapacityLow", pool=pool), "the pool is empty: no alert"

        # Fill it with fully allocated volumes until less than 10 % is available.
        info = ok(client.call("pool.info", {"name": pool}))
        filled = 0
        while info["available"] / info["capacity"] >= 0.1:
            assert filled < 5, f"the pool does not fill up: {info}"
            size = (info["available"] - info["capacity"] // 20) // 2**20 * 2**20  # leave about 5 %
            ok(client.call("volume.create", {"pool": pool, "name": f"fill-{filled}.raw", "format": "raw",
                                            "capacity": size, "allocation": size}, timeout=60))
            filled += 1
            info = ok(client.call("pool.info", {"name": pool}))

        # pending first, then firing once POOL_FOR has passed
        states: list[str] = []

        def firing() -> bool:
            alerts = server.alerts("PoolCapacityLow", pool=pool)
            assert len(alerts) <= 1, alerts
            if alerts and (not states or states[-1] != alerts[0]["state"]):
                states.append(alerts[0]["state"])
            return bool(alerts) and alerts[0]["state"] == "firing"

        wait_for(firing, 30, f"PoolCapacityLow for {pool} to fire ({server.output()})", interval=0.2)
        assert states == ["pending", "firing"], states
        alert = server.alerts("PoolCapacityLow", pool=pool)[0]
        assert alert["labels"]["host"] == harness.host and alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == "storage-worker" and alert["labels"]["instance"] == f"127.0.0.1:{port}"
        assert float(alert["value"]) < 0.1
        assert alert["annotations"]["summary"] == f"Pool {pool} on {harness.host} is almost full"
        # humanizePercentage is Go's %.4g of the value times 100
        assert f"({float(alert['value']) * 100:.4g}% now)" in alert["annotations"]["description"], alert
        # nothing else of this worker's fires: it is connected, ready and its journal writable
        others = [a for a in server.api("alerts")["alerts"] if a["labels"]["alertname"] != "PoolCapacityLow"]
        assert others == [], others
    finally:
        remove_pools(harness.name_prefix)  # before the file system under it goes away
    assert time.monotonic() - started < 60


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(make_worker):
    """Against a worker that has done some work, so that labelled families have samples too."""
    port = free_port()
    harness = make_worker(metrics_port=port)
    client = harness.client()
    pool = harness.running_pool(client)
    ok(client.call("volume.create", {"pool": pool, "name": "a.raw", "capacity": 2**20}))
    client.call("volume.info", {"pool": pool, "name": "absent"})  # a failed result
    wait_for(lambda: f'pool="{pool}"' in get(port, "/metrics")[1], 10, "the pool gauges")
    status, exposition = get(port, "/metrics")
    assert status == 200
    exported = exported_names(exposition)
    assert "storage_worker_commands_total" in exported and "storage_worker_ready" in exported

    read = {f"alert {name}": metric_names(expr) for name, expr in alert_expressions().items()}
    assert dashboard_files(), "no dashboard"
    for path in dashboard_files():
        read.update(dashboard_expressions(path))
    missing = {where: sorted(names - exported - EXTERNAL_METRICS) for where, names in read.items()
               if names - exported - EXTERNAL_METRICS}
    assert not missing, f"metric names the worker does not export: {json.dumps(missing, indent=2)}"
    assert all(names for names in read.values()), [where for where, names in read.items() if not names]

    # and the other way round: the dashboard shows every family the worker exports (but the
    # `_created` timestamps prometheus_client exposes as gauge families of their own)
    families = {family.name for family in text_string_to_metric_families(exposition)
                if not family.name.endswith("_created")}
    shown = set().union(*(names for where, names in read.items() if not where.startswith("alert ")))
    unseen = sorted(family for family in families
                    if not any(name == family or name.startswith(family + "_") for name in shown))
    assert not unseen, f"families on no dashboard panel: {unseen}"
