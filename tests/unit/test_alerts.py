"""compose/prometheus/alerts.yml: valid for promtool, and every alert tested by
tests/unit/alerts_test.yml both firing and not firing (promtool test rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require
from tests.metric_names import ALERTS_FILE

ROOT = Path(__file__).resolve().parents[2]
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
PROMETHEUS_CONFIG = ROOT / "compose" / "prometheus" / "prometheus.yml"
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> str:
    """Run promtool; fail with everything it said unless it succeeded."""
    binary = shutil.which("promtool")
    require(binary is not None, "promtool is not installed (Debian's prometheus package)")
    completed = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} exited {completed.returncode}:\n{output}")
    return output


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", str(ALERTS_FILE))


def test_promtool_checks_the_prometheus_config_and_finds_the_rules():
    output = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in output and "9 rules found" in output


def test_promtool_rule_unit_tests_pass():
    promtool("test", "rules", str(RULE_TESTS))


def test_the_alerts_an_operator_needs():
    assert {rule["alert"] for rule in rules()} == {
        "WorkerDown", "WorkerNotReady", "LibvirtDisconnected", "BrokerDisconnected", "PoolCapacityLow",
        "DeadLettersWaiting", "CommandFailureRatioHigh", "EventsDropped", "JournalUnwritable"}


def test_every_alert_has_a_severity_a_summary_and_what_to_do():
    for rule in rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and len(annotations["description"]) > 100, rule["alert"]
        if rule["alert"] != "EventsDropped":  # a drop is news at once: no pending period
            assert "for" in rule, f"{rule['alert']} has no `for:` (one bad scrape would page)"


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [str((RULE_TESTS.parent / path).resolve()) for path in tests["rule_files"]] == [str(ALERTS_FILE)]
    firing, quiet = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_the_pool_threshold_is_the_workers_default_capacity_low():
    from worker.config import Settings

    rule = next(rule for rule in rules() if rule["alert"] == "PoolCapacityLow")
    assert f"< {Settings.model_fields['capacity_low'].default}" in rule["expr"]
