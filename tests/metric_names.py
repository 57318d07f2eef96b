"""The metric names a PromQL expression reads, for checking alert rules and dashboards against what
the worker exports. A small lexer, not a PromQL parser: it drops string literals, label matchers,
range and subquery brackets, Grafana variables and the label lists of by/without/on/ignoring/
group_left/group_right, then keeps every identifier that is not a keyword and not called as a
function. Good enough for the expressions this project writes; tests/unit/test_metric_names.py
says what it understands."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS_FILE = ROOT / "compose" / "prometheus" / "alerts.yml"
DASHBOARDS_DIR = ROOT / "compose" / "grafana" / "dashboards"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[a-zA-Z_]\w*\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (a name given as __name__="…" in a matcher is not seen)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    while _BRACKETS.search(text):
        text = _BRACKETS.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def variable_query_names(query: str) -> set[str]:
    """Metric names of a Grafana variable query: label_values(selector, label), label_values(label)
    (no metric), metrics(regex) (no fixed name) or query_result(expr)."""
    query = query.strip()
    match = _LABEL_VALUES.match(query)
    if match:
        return metric_names(match.group(1))
    if re.match(r"^label_values\s*\(\s*[a-zA-Z_]\w*\s*\)$", query) or query.startswith("metrics("):
        return set()
    match = re.match(r"^query_result\s*\((.*)\)\s*$", query, re.S)
    return metric_names(match.group(1) if match else query)


def alert_expressions(path: Path = ALERTS_FILE) -> dict[str, str]:
    """alert or record name -> expression, for every rule of a rules file."""
    document = yaml.safe_load(path.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in document["groups"] for rule in group["rules"]}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_expressions(path: Path) -> dict[str, set[str]]:
    """Where -> metric names, for every panel target and every query variable of a dashboard."""
    dashboard = json.loads(path.read_text())
    found: dict[str, set[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found[f"{path.name}: panel {panel.get('title')!r} {target.get('refId')}"] = \
                    metric_names(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            found[f"{path.name}: variable {variable['name']}"] = variable_query_names(query or "")
    return found


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))
