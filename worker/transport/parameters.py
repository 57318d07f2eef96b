"""Connection parameters for the broker: the URL, heartbeat, TLS and the name the connection shows."""

from __future__ import annotations

import logging
import ssl

import pika

from messages.brokers import broker_urls, shuffled

log = logging.getLogger(__name__)


def node_parameters(amqp_url: str, *, heartbeat: int, ca_file: str | None = None, cert_file: str | None = None,
                    key_file: str | None = None, name: str = "storage-worker") -> list[pika.URLParameters]:
    """Parameters for every broker node AMQP_URL names (messages.brokers), in a random order so that
    a fleet spreads over the nodes. Raises ValueError for a setting that names no usable node."""
    return [connection_parameters(url, heartbeat=heartbeat, ca_file=ca_file, cert_file=cert_file,
                                  key_file=key_file, name=name)
            for url in shuffled(broker_urls(amqp_url))]


def where(parameters: pika.ConnectionParameters) -> str:
    return f"{parameters.host}:{parameters.port}{parameters.virtual_host and '/' + parameters.virtual_host}"


def connection_parameters(url: str, *, heartbeat: int, ca_file: str | None = None,
                          cert_file: str | None = None, key_file: str | None = None,
                          name: str = "storage-worker") -> pika.URLParameters:
    """pika parameters for `url`. With amqps:// the broker's certificate is verified against
    `ca_file` (the system's CAs when None) and its name against the URL's host; `cert_file` (with
    `key_file`, unless the key is in the same file) is the client certificate offered to the broker.

    A TLS file that cannot be loaded raises ValueError naming the setting and the file, at once
    rather than as a reconnect loop; TLS settings given with a plain amqp:// URL are logged as
    ignored. The URL's credentials never appear in what is raised or logged."""
    parameters = pika.URLParameters(url)
    parameters.heartbeat = heartbeat
    parameters.blocked_connection_timeout = 300
    parameters.client_properties = {"connection_name": name}
    tls_settings = {"amqp_ca_file": ca_file, "amqp_cert_file": cert_file, "amqp_key_file": key_file}
    if parameters.ssl_options is None:  # amqp:// (pika reads the scheme case-insensitively)
        ignored = sorted(setting for setting, value in tls_settings.items() if value)
        if ignored:
            log.warning("TLS settings ignored: the AMQP URL is not amqps://", extra={"settings": ignored})
        return parameters
    if key_file and not cert_file:
        raise ValueError("amqp_key_file is set without amqp_cert_file (the client certificate)")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        what = f"amqp_ca_file {ca_file!r}" if ca_file else "the system's CA certificates"
        raise ValueError(f"cannot load {what} for AMQP over TLS: {error}") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"cannot load the client certificate amqp_cert_file {cert_file!r}"
                             f"{f' / amqp_key_file {key_file!r}' if key_file else ''} for AMQP over TLS: "
                             f"{error}") from None
    parameters.ssl_options = pika.SSLOptions(context, server_hostname=parameters.host)
    log.info("the broker connection uses TLS",
             extra={"broker": where(parameters), "ca_file": ca_file or "system default",
                    "client_certificate": cert_file})
    return parameters
