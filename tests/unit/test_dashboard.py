"""compose/grafana/dashboards/storage-worker.json: a Grafana 10 dashboard whose every query goes to
the Prometheus its ${datasource} variable picks, and that shows what an operator looks at. That
its metric names are the worker's is checked against a real worker's /metrics
(tests/integration/test_alerts.py)."""

from __future__ import annotations

import json
import re

import pytest

from tests.metric_names import DASHBOARDS_DIR, panels

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DASHBOARDS_DIR / "storage-worker.json").read_text())


def queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_it_is_a_grafana_10_dashboard_with_a_stable_uid(dashboard):
    assert dashboard["uid"] == "storage-worker" and dashboard["title"]
    assert 37 <= dashboard["schemaVersion"] <= 39, "Grafana 10 writes schema versions 37 to 39"
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"


def test_the_data_source_is_a_variable(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard):
    seen_ids, cells = set(), {}
    for panel in panels(dashboard):
        assert panel["id"] not in seen_ids, f"panel id {panel['id']} used twice"
        seen_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_rates_use_grafanas_rate_interval(dashboard):
    for expr in queries(dashboard):
        for window in re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", expr


def test_worker_queries_follow_the_worker_variable(dashboard):
    for expr in queries(dashboard):
        for selector in re.findall(r"storage_worker_\w+(\{[^}]*\})?", expr):
            assert 'instance=~"$instance"' in selector, expr


@pytest.mark.parametrize(("what", "pattern"), [
    ("commands by op and status", r"sum by \(op, status\) \(rate\(storage_worker_commands_total"),
    ("latency p50 per op", r"histogram_quantile\(0\.5, sum by \(le, op\) \(rate\(storage_worker_command_duration_seconds_bucket"),
    ("latency p99 per op", r"histogram_quantile\(0\.99, sum by \(le, op\) \(rate\(storage_worker_command_duration_seconds_bucket"),
    ("in flight", r"storage_worker_commands_in_flight"),
    ("retries by op and code", r"sum by \(op, code\) \(rate\(storage_worker_retries_total"),
    ("events by type", r"sum by \(type\) \(rate\(storage_worker_events_published_total"),
    ("events dropped", r"storage_worker_events_dropped"),
    ("event latency p50", r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(storage_worker_event_latency_seconds_bucket"),
    ("event latency p99", r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(storage_worker_event_latency_seconds_bucket"),
    ("pool capacity", r"storage_worker_pool_capacity_bytes"),
    ("pool available", r"storage_worker_pool_available_bytes"),
    ("broker connected", r"storage_worker_broker_connected"),
    ("libvirt connected", r"storage_worker_libvirt_connected"),
    ("journal commands", r"storage_worker_journal_commands"),
    ("ready", r"storage_worker_ready"),
    ("journal writable", r"storage_worker_journal_writable"),
])
def test_it_shows(dashboard, what, pattern):
    assert any(re.search(pattern, expr) for expr in queries(dashboard)), f"no panel shows {what}"
