"""messages.brokers: the broker nodes of one AMQP_URL setting."""

from __future__ import annotations

import random

import pytest

from messages.brokers import BrokerUrlError, broker_urls, masked, shuffled
from worker.config import load_settings

A = "amqp://user:pw@node-a:5672/%2F"
B = "amqp://user:pw@node-b:5673/%2F"


@pytest.mark.parametrize("value", [f"{A};{B}", f" {A} ; {B} ;", f'["{A}", "{B}"]', [A, B]])
def test_a_list_of_nodes_in_each_written_form(value):
    assert broker_urls(value) == [A, B]


def test_one_url_is_one_node():
    assert broker_urls(A) == [A]


@pytest.mark.parametrize("other, what", [
    ("amqps://user:pw@node-b:5671/%2F", "scheme"),
    ("amqp://user:other@node-b:5672/%2F", "credentials"),
    ("amqp://admin:pw@node-b:5672/%2F", "credentials"),
    ("amqp://user:pw@node-b:5672/tenant", "vhost"),
])
def test_nodes_of_one_cluster_share_scheme_credentials_and_vhost(other, what):
    with pytest.raises(BrokerUrlError, match=f"node 2 of AMQP_URL .* has another {what} than node 1") as raised:
        broker_urls(f"{A};{other}")
    assert "pw@" not in str(raised.value) and "other@" not in str(raised.value), "no password in the message"


@pytest.mark.parametrize("same", ["amqp://user:pw@node-b:5672", "amqp://user:pw@node-b:5672/"])
def test_the_default_vhost_written_three_ways_is_one_vhost(same):
    assert broker_urls(f"{A};{same}") == [A, same]


@pytest.mark.parametrize("value, fragment", [
    ("", "names no broker node"),
    (";;", "names no broker node"),
    ("[1, 2]", "JSON list of URL strings"),
    ('["amqp://a"', "not valid JSON"),
    ("http://node-a/", "node 1 of AMQP_URL (http://node-a/) is not an amqp:// or amqps:// URL"),
    ("amqp://user:pw@node-a:port/", "has a port that is not a number"),
])
def test_a_setting_that_names_no_usable_node_says_why(value, fragment):
    with pytest.raises(BrokerUrlError) as raised:
        broker_urls(value)
    assert fragment in str(raised.value)


def test_masked_hides_only_the_password():
    assert masked(A) == "amqp://user:***@node-a:5672/%2F"
    assert masked("amqp://node-a/") == "amqp://node-a/"


def test_shuffled_keeps_every_node_and_varies_the_first():
    nodes = [f"amqp://u:p@n{i}/" for i in range(5)]
    firsts = {shuffled(nodes, random.Random(seed))[0] for seed in range(50)}
    assert sorted(shuffled(nodes, random.Random(1))) == sorted(nodes)
    assert len(firsts) > 1, "a fleet spreads over the nodes"


def test_settings_take_a_toml_array_and_refuse_a_mixed_cluster_without_showing_the_password():
    assert "node-b" in load_settings({"amqp_url": [A, B]}).amqp_url.get_secret_value()
    with pytest.raises(ValueError) as raised:
        load_settings({"amqp_url": f"{A};amqp://user:secret-2@node-b/%2F"})
    assert "secret-2" not in str(raised.value) and ":pw@" not in str(raised.value)
