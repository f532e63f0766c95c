"""Checks for string settings whose shape matters (addresses, URLs, paths).

Each returns the problem text or None, so the loader can collect them instead of stopping.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_HOST = re.compile(r"[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.%A-Za-z]+\]")


def split_host_port(text: str, *, allow_empty_host: bool = False) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets, as Go's net.SplitHostPort wants); ValueError if not."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected host:port, got {text!r}")
    if not host and not allow_empty_host:
        raise ValueError(f"expected host:port with a host, got {text!r}")
    if host and not _HOST.fullmatch(host):
        raise ValueError(f"invalid host {host!r} in {text!r} (write IPv6 addresses as [::1]:port)")
    if not port_text.isdigit():
        raise ValueError(f"invalid port {port_text!r} in {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port} in {text!r}")
    return host.removeprefix("[").removesuffix("]"), port


def check_listen(text: str) -> str | None:
    try:
        split_host_port(text, allow_empty_host=True)
    except ValueError as exc:
        return str(exc)
    return None


def check_node(text: str) -> str | None:
    try:
        split_host_port(text)
    except ValueError as exc:
        return str(exc)
    return None


def check_http_url(text: str) -> str | None:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL {text!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {text!r}"
    if not parts.hostname:
        return f"URL {text!r} has no host"
    if port == 0:
        return f"port must be between 1 and 65535 in {text!r}"
    if parts.query or parts.fragment:
        return f"URL {text!r} must not have a query or fragment"
    return None


def check_endpoint(text: str) -> str | None:
    if not text.startswith("/"):
        return f"must start with '/', got {text!r}"
    if any(c.isspace() for c in text) or "?" in text or "#" in text:
        return f"must be a plain URL path, got {text!r}"
    return None


def check_name(text: str) -> str | None:
    """Plugin names are identifiers in config and in logs; blanks are always a mistake."""
    if not text.strip():
        return "must not be empty"
    if text != text.strip():
        return f"must not start or end with spaces, got {text!r}"
    return None


def check_key_prefix(text: str) -> str | None:
    # An empty prefix would mix lock keys into whatever else lives in the Redis database.
    if not text:
        return "must not be empty"
    # The Redis backend puts every key under one hash tag of its own, right after the prefix.
    if "{" in text or "}" in text:
        return f"must not contain {{ or }} (the backend adds its own hash tag), got {text!r}"
    return None
