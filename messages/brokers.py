"""The broker nodes of one `AMQP_URL` setting (docs/contract.md "Running the worker").

A deployment's broker is a RabbitMQ cluster; the setting names its nodes: one URL, several
separated by ";" (the failover form kombu and Celery write), or a JSON list of URLs. The nodes
belong to one cluster, so they share the scheme (amqp/amqps), the credentials and the vhost; only
host and port differ. Clients and workers connect to one node and move to the next when it fails.
"""

from __future__ import annotations

import json
import random
from urllib.parse import unquote, urlsplit, urlunsplit


class BrokerUrlError(ValueError):
    """The setting cannot be read as broker nodes; the message names the problem (no password)."""


def broker_urls(value: str | list[str]) -> list[str]:
    """The node URLs, in the order given."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise BrokerUrlError(f"AMQP_URL looks like a JSON list but is not valid JSON: {error.msg} "
                                     f"at column {error.colno}") from None
        else:
            value = [part.strip() for part in text.split(";") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(url, str) for url in value):
        raise BrokerUrlError("AMQP_URL must be a URL, URLs separated by ';', or a JSON list of URL strings")
    if not value:
        raise BrokerUrlError("AMQP_URL names no broker node")
    first = _shared(value[0], 1)
    for index, url in enumerate(value[1:], start=2):
        other = _shared(url, index)
        for what, mine, theirs in zip(("scheme", "credentials", "vhost"), first, other):
            if mine != theirs:
                raise BrokerUrlError(f"node {index} of AMQP_URL ({masked(url)}) has another {what} than node 1 "
                                     f"({masked(value[0])}); the nodes of one cluster share scheme, "
                                     f"credentials and vhost")
    return list(value)


def shuffled(urls: list[str], rng: random.Random | None = None) -> list[str]:
    """The nodes in a random order, so that a fleet of processes spreads over them."""
    order = list(urls)
    (rng or random).shuffle(order)
    return order


def masked(url: str) -> str:
    """The URL with its password replaced by ***: amqp://guest:***@localhost:5672/%2F."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}" if sep else parts.netloc))


def _shared(url: str, index: int) -> tuple[str, tuple[str | None, str | None], str]:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("amqp", "amqps") or not parts.hostname:
        raise BrokerUrlError(f"node {index} of AMQP_URL ({masked(url)}) is not an amqp:// or amqps:// URL with a host")
    try:
        parts.port
    except ValueError:
        raise BrokerUrlError(f"node {index} of AMQP_URL ({masked(url)}) has a port that is not a number") from None
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"  # pika's reading of the path
    return parts.scheme.lower(), (parts.username, parts.password), vhost
