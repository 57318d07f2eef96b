"""connection_parameters: TLS settings for amqps:// URLs, and clear errors about them."""

from __future__ import annotations

import logging
import ssl

import pytest

from tests.integration.tls import issue, make_ca
from worker.transport.parameters import connection_parameters

PASSWORD = "Pw-unit-9f3c1e"


def test_amqps_verifies_the_broker_against_the_ca_and_the_url_host(tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = issue(ca, tmp_path, "client", "a client", client=True)
    parameters = connection_parameters(f"amqps://u:{PASSWORD}@broker.example:5671/%2F", heartbeat=30,
                                       ca_file=str(ca.cert), cert_file=str(cert), key_file=str(key), name="n")
    options = parameters.ssl_options
    assert options is not None and options.server_hostname == "broker.example"
    assert options.context.verify_mode == ssl.CERT_REQUIRED and options.context.check_hostname
    assert parameters.port == 5671 and parameters.client_properties == {"connection_name": "n"}


def test_a_missing_ca_file_is_named_and_the_password_is_not(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError) as raised:
        connection_parameters(f"amqps://u:{PASSWORD}@localhost/%2F", heartbeat=30, ca_file=str(missing))
    assert "amqp_ca_file" in str(raised.value) and str(missing) in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_an_unreadable_client_certificate_is_named(tmp_path):
    ca = make_ca(tmp_path, "ca")
    garbage = tmp_path / "client.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError) as raised:
        connection_parameters(f"amqps://u:{PASSWORD}@localhost/%2F", heartbeat=30, ca_file=str(ca.cert),
                              cert_file=str(garbage))
    assert "amqp_cert_file" in str(raised.value) and PASSWORD not in str(raised.value)


def test_a_key_without_a_certificate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="amqp_key_file"):
        connection_parameters("amqps://localhost/%2F", heartbeat=30, key_file=str(tmp_path / "k.key"))


def test_tls_settings_with_a_plain_url_are_logged_as_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="worker.transport.parameters")
    parameters = connection_parameters("amqp://localhost/%2F", heartbeat=30, ca_file="/etc/ca.pem")
    assert parameters.ssl_options is None
    assert any("TLS settings ignored" in r.getMessage() and r.settings == ["amqp_ca_file"] for r in caplog.records)
