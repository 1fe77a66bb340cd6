"""A revocation file (``revocation.file``) -> revocation entries, or a ConfigError with file and line.

The file, for deployments without a shared store (same entries as ``authz revoke``)::

    revoked:
      - jti: 0f1e2d...                # the token's jti (or jti_hash: as authz revocations list prints)
        expires: 2026-12-01T00:00:00Z # the token's exp: the entry is dropped then
      - subject: alice                # every token of alice from this issuer issued before `before`
        issuer: https://idp.example
        before: 2026-11-20T12:00:00Z
      - client: mobile-app            # every token whose azp or client_id is mobile-app, likewise
        issuer: https://idp.example
        before: 1763640000            # times: RFC 3339 or seconds since the epoch

A subject or client entry is dropped ``token.max_lifetime + token.clock_skew`` after
``before`` (no token issued before it can still be valid), unless ``expires`` says otherwise.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from authz.config.yaml import LineList, LineMap, Place, parse_yaml
from authz.core.revocation import Entry, EntryKind, jti_hash
from authz.core.subscription import LATEST_TIME
from authz.errors import ConfigError

__all__ = ["format_time", "parse_revocation_file", "parse_time"]

_KEYS = {
    EntryKind.JTI: ({"jti", "jti_hash"}, {"expires"}),
    EntryKind.SUBJECT: ({"subject", "issuer", "before"}, {"expires"}),
    EntryKind.CLIENT: ({"client", "issuer", "before"}, {"expires"}),
}


def parse_revocation_file(raw: bytes, source: str, entry_lifetime: float) -> tuple[Entry, ...]:
    """The entries of a revocation file; every problem is a ConfigError naming file, line and reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "the file is not UTF-8") from None
    data = parse_yaml(text, source) if text.strip() else LineMap()
    if not isinstance(data, LineMap):
        raise ConfigError(source, "a revocation file is a mapping with a 'revoked' list", 1)
    if not hasattr(data, "line"):
        data.line, data.lines = 1, {}
    root = Place(source, "revocations", data.line, data)
    for key in data:
        if key != "revoked":
            raise root.key(key).error("unknown key (the file holds 'revoked')")
    items = data.get("revoked")
    if items is None:
        return ()
    if not isinstance(items, LineList):
        raise root.key("revoked").error("must be a list of entries")
    entries = []
    for index, item in enumerate(items):
        entries.append(_entry(item, root.key("revoked").item(index), entry_lifetime))
    return tuple(entries)


def _entry(item: Any, place: Place, entry_lifetime: float) -> Entry:
    if not isinstance(item, LineMap):
        raise place.error("must be a mapping (jti, subject or client entry)")
    kinds = [kind for kind, (needed, _) in _KEYS.items() if needed & set(item) - {"issuer", "before"}]
    if len(kinds) != 1:
        raise place.error("an entry names exactly one of jti (or jti_hash), subject or client")
    kind = kinds[0]
    needed, optional = _KEYS[kind]
    for key in item:
        if key not in needed | optional:
            raise place.key(key).error(f"unknown key in a {kind} entry")
    expires = _time(item, place, "expires") if "expires" in item else None
    if kind is EntryKind.JTI:
        if ("jti" in item) == ("jti_hash" in item):
            raise place.error("a jti entry has jti or jti_hash, not both")
        if expires is None:
            raise place.key("expires").error("a jti entry needs expires (the token's exp)")
        if "jti" in item:
            value = _text(item, place, "jti")
            return Entry(kind, jti_hash(value), expires_at=expires)
        digest = _text(item, place, "jti_hash").lower()
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            raise place.key("jti_hash").error("must be 32 hex digits (authz revocations list prints it)")
        return Entry(kind, digest, expires_at=expires)
    for key in sorted(needed):
        if key not in item:
            raise place.error(f"missing required key {key!r}")
    value = _text(item, place, kind.value)
    issuer = _text(item, place, "issuer")
    before = _time(item, place, "before")
    return Entry(kind, value, issuer, before, before + entry_lifetime if expires is None else expires)


def _text(item: LineMap, place: Place, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise place.key(key).error("must be a non-empty string")
    return value


def _time(item: LineMap, place: Place, key: str) -> float:
    try:
        return parse_time(item.get(key))
    except ValueError as exc:
        raise place.key(key).error(str(exc)) from None


def parse_time(value: Any) -> float:
    """Seconds since the epoch from a number, an RFC 3339 string or a YAML timestamp; ValueError if not."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, bool) or value is None:
        raise ValueError("must be a time: RFC 3339 (2026-01-01T00:00:00Z) or seconds since the epoch")
    elif isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a time: seconds since the epoch")
        if value > LATEST_TIME:  # what RFC 3339 can write; a larger number is most often milliseconds
            raise ValueError("must be a time before year 10000: seconds (not milliseconds) since the epoch")
        return float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(
                    "must be a time: RFC 3339 (2026-01-01T00:00:00Z) or seconds since the epoch"
                ) from None
            return parse_time(number)
    else:
        raise ValueError("must be a time: RFC 3339 (2026-01-01T00:00:00Z) or seconds since the epoch")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)  # YAML's timestamps without a zone are UTC
    return parse_time(moment.timestamp())  # the same bounds (9999-12-31T23:59:59-01:00 is past them)


def format_time(value: float) -> str:
    """RFC 3339 in UTC with milliseconds (``2026-12-01T00:00:00.000Z``): what ``parse_time`` reads."""
    moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
