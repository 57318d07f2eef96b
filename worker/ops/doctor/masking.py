"""Keeping the AMQP password out of the report: URLs are shown masked, error texts scrubbed."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from messages.brokers import broker_urls, masked


def mask_url(url: str) -> str:
    """Every node URL of the setting with its password replaced by ***."""
    try:
        return ";".join(masked(node) for node in broker_urls(url))
    except ValueError:
        return masked(url)


def url_secrets(url: str) -> list[str]:
    """The passwords of the setting's URLs (read leniently: also from a setting that is wrong) as
    written and decoded, for `scrub`; none for a password that equals its user name (guest/guest is
    no secret, and scrubbing it would hide the user name too)."""
    try:
        nodes = json.loads(url) if url.strip().startswith("[") else url.split(";")
    except json.JSONDecodeError:
        nodes = url.split(";")
    secrets: set[str] = set()
    for node in nodes if isinstance(nodes, list) else []:
        try:
            parts = urlsplit(str(node).strip())
        except ValueError:
            continue
        if parts.password and unquote(parts.password) != unquote(parts.username or ""):
            secrets |= {unquote(parts.password), parts.password}
    return sorted(secrets, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
