"""Keeping the AMQP password out of the report: URLs are shown masked, error texts scrubbed."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***: amqp://guest:***@localhost:5672/%2F."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    masked = f"{user}:***@{hostinfo}" if sep else parts.netloc
    return urlunsplit(parts._replace(netloc=masked))


def url_secrets(url: str) -> list[str]:
    """The URL's password as written and decoded, for `scrub`; none when it equals the user name
    (guest/guest is no secret, and scrubbing it would hide the user name too)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if not parts.password:
        return []
    decoded = unquote(parts.password)
    if decoded == unquote(parts.username or ""):
        return []
    return sorted({decoded, parts.password}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
