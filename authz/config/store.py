"""The ``store:`` and ``revocation:`` sections -> StoreSettings and RevocationSettings.

The URL forms (redis-py reads none of the Sentinel ones itself, so they are parsed here, and a
bad one is refused at load with file and line rather than at the first connection):

- ``redis://[user@]host[:port][/db]``, ``rediss://`` for TLS: one server;
- ``redis+sentinel://[user@]host[:port][,host[:port]...]/service[/db]``, ``rediss+sentinel://``:
  the primary the Sentinels name for ``service`` (TLS to the data nodes with ``rediss``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["ParsedUrl", "parse_store_url"]

_DEFAULT_PORT = 6379
_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    hosts: tuple[tuple[str, int], ...]
    sentinel_service: str | None
    db: int
    username: str | None
    tls: bool


def parse_store_url(url: str) -> ParsedUrl:
    """Parse ``store.url``; ValueError with the reason for a URL we cannot connect with."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
        raise ValueError("must be a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError("query and fragment are not read: use the store settings")
    authority, _, path = rest.partition("/")
    username: str | None = None
    if "@" in authority:
        user, _, authority = authority.rpartition("@")
        if ":" in user:
            raise ValueError("no password in the URL: put it in password_file")
        username = urllib.parse.unquote(user) or None
    sentinel = scheme.endswith("+sentinel")
    default_port = _SENTINEL_PORT if sentinel else _DEFAULT_PORT
    hosts = tuple(_host(part, default_port) for part in authority.split(","))
    if not sentinel and len(hosts) != 1:
        raise ValueError("several hosts need redis+sentinel:// (Sentinel)")
    segments = path.split("/") if path else []
    service: str | None = None
    if sentinel:
        if not segments or not segments[0]:
            raise ValueError("a Sentinel URL names the service: redis+sentinel://host:port/service[/db]")
        service = urllib.parse.unquote(segments.pop(0))
    db = 0
    if segments and segments != [""]:
        if len(segments) != 1 or not segments[0].isdigit() or int(segments[0]) > 15:
            raise ValueError("the path is the database number (0-15)")
        db = int(segments[0])
    return ParsedUrl(hosts, service, db, username, scheme.startswith("rediss"))


def _host(text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise ValueError("a host is missing")
    if text.startswith("["):  # [IPv6]:port
        host, _, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":") if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"{text!r} is not host:port")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return host, int(port_text)
