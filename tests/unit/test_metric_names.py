"""tests/metric_names.py: which metric names an expression reads."""

from __future__ import annotations

import pytest

from tests.metric_names import metric_names, variable_query_names


@pytest.mark.parametrize(("expr", "names"), [
    ('up{job="storage-worker"} == 0', {"up"}),
    ("storage_worker_pool_available_bytes / storage_worker_pool_capacity_bytes < 0.1",
     {"storage_worker_pool_available_bytes", "storage_worker_pool_capacity_bytes"}),
    ('sum by (job, instance) (rate(storage_worker_commands_total{status="failed"}[15m]))'
     " / sum by (job, instance) (rate(storage_worker_commands_total[15m])) > 0.25"
     " and sum by (job, instance) (increase(storage_worker_commands_total[15m])) >= 20",
     {"storage_worker_commands_total"}),
    ("histogram_quantile(0.99, sum by (le, op) (rate(storage_worker_command_duration_seconds_bucket"
     '{instance=~"$instance"}[$__rate_interval])))', {"storage_worker_command_duration_seconds_bucket"}),
    ("sum(rate(a_total[5m] offset 1h)) without (instance) / on(job) group_left(host) b_info",
     {"a_total", "b_info"}),
    ("max_over_time(deriv(x[10m])[1h:5m]) > bool 1e-3", {"x"}),
    ('label_replace(y, "dst", "$1", "src", "(.*)") unless z', {"y", "z"}),
    ("vector(1) + time()", set()),
    ('rabbitmq_detailed_queue_messages{queue="storage.dead", vhost=~"${vhost}"} > 0',
     {"rabbitmq_detailed_queue_messages"}),
    ("sum:recorded:rate5m > Inf", {"sum:recorded:rate5m"}),
])
def test_metric_names(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(("query", "names"), [
    ("label_values(storage_worker_commands_in_flight, instance)", {"storage_worker_commands_in_flight"}),
    ('label_values(storage_worker_pool_capacity_bytes{instance=~"$instance"}, pool)',
     {"storage_worker_pool_capacity_bytes"}),
    ("label_values(instance)", set()),
    ("query_result(topk(5, storage_worker_journal_commands))", {"storage_worker_journal_commands"}),
])
def test_variable_query_names(query, names):
    assert variable_query_names(query) == names
