"""Service URLs as they may be shown or logged: never with their password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

OFFICIAL_OPENAI_API = "https://api.openai.com/v1"
"""Where the OpenAI clients go when no base URL is set."""


def redact_url(url: str) -> str:
    """``scheme://user:secret@host:port/path`` → ``scheme://user:***@host:port/path``.

    URLs without a password come back unchanged; one that cannot be parsed is not shown.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}"))
