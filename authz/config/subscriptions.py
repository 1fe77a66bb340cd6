"""A subscriptions file (``subscriptions.file``) <-> subscription records, with file and line on error.

For deployments without a shared store. ``authz subscriptions`` edits it (and appends every
change to the audit trail beside it, ``audit_path``); a hand edit is read the same way::

    subscriptions:
      - tenant: acme
        client: mobile-app            # the token's client claim (azp, then client_id, by default)
        api: orders                   # one of the tenant's apis
        status: approved              # pending, approved, rejected or revoked
        requested_by: team-mobile
        requested_at: 2026-11-20T09:00:00Z
        request_reason: checkout needs the order history
        decided_by: alice
        decided_at: 2026-11-20T10:00:00Z
        decision_reason: reviewed in SEC-142
        expires: 2027-01-01T00:00:00Z # optional: the approval ends then (subscription_expired)

Only tenant, client, api and status are required. A tenant or API the configuration does not
know, or the same (tenant, client, api) twice, is refused like any configuration error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from authz.config.revocations import format_time, parse_time
from authz.config.yaml import LineList, LineMap, Place, parse_yaml
from authz.core.policy import TenantIndex
from authz.core.subscription import Status, Subscription
from authz.errors import ConfigError

__all__ = ["audit_path", "known_apis", "parse_subscription_file", "render_subscription_file"]

_REQUIRED = ("tenant", "client", "api", "status")
_TEXTS = ("requested_by", "request_reason", "decided_by", "decision_reason")
_TIMES = ("requested_at", "decided_at", "expires")
_HEADER = (
    "# API subscriptions of client applications (envoy-jwe-authz). `authz subscriptions` edits this\n"
    "# file and appends each change to the audit trail beside it; hand edits are read alike.\n"
)


def known_apis(tenants: TenantIndex) -> dict[str, frozenset[str]]:
    """Each configured tenant and the names of its APIs: what a subscription may name."""
    return {name: frozenset(tenant.apis) for name, tenant in tenants.by_name.items()}


def audit_path(file: str | Path) -> Path:
    """The append-only audit trail of a subscriptions file: beside it, ``<name>.audit.jsonl``."""
    path = Path(file)
    return path.with_name(path.name + ".audit.jsonl")


def parse_subscription_file(
    raw: bytes, source: str, apis: Mapping[str, frozenset[str]]
) -> tuple[Subscription, ...]:
    """The records of a subscriptions file; every problem is a ConfigError naming file, line and reason.

    ``apis``: the configured tenants and the names of their APIs.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "the file is not UTF-8") from None
    data = parse_yaml(text, source) if _has_content(text) else LineMap()
    if not isinstance(data, LineMap):
        raise ConfigError(source, "a subscriptions file is a mapping with a 'subscriptions' list", 1)
    if not hasattr(data, "line"):
        data.line, data.lines = 1, {}
    root = Place(source, "subscriptions", data.line, data)
    for key in data:
        if key != "subscriptions":
            raise root.key(key).error("unknown key (the file holds 'subscriptions')")
    items = data.get("subscriptions")
    if items is None:
        return ()
    if not isinstance(items, LineList):
        raise root.key("subscriptions").error("must be a list of subscriptions")
    records: dict[tuple[str, str, str], Subscription] = {}
    for index, item in enumerate(items):
        place = root.key("subscriptions").item(index)
        record = _record(item, place, apis)
        if record.key in records:
            raise place.error(
                f"client {record.client!r} has a subscription to API {record.api!r} of tenant "
                f"{record.tenant!r} already"
            )
        records[record.key] = record
    return tuple(records.values())


def _has_content(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _record(item: Any, place: Place, apis: Mapping[str, frozenset[str]]) -> Subscription:
    if not isinstance(item, LineMap):
        raise place.error("must be a mapping (tenant, client, api, status, ...)")
    for key in item:
        if key not in (*_REQUIRED, *_TEXTS, *_TIMES):
            raise place.key(key).error("unknown key in a subscription")
    for key in _REQUIRED:
        if key not in item:
            raise place.error(f"missing required key {key!r}")
    tenant, client, api = (_text(item, place, key) for key in ("tenant", "client", "api"))
    if tenant not in apis:
        raise place.key("tenant").error(f"tenant {tenant!r} is not configured")
    if api not in apis[tenant]:
        raise place.key("api").error(f"API {api!r} is not one of the apis of tenant {tenant!r}")
    status = item.get("status")
    if status not in set(Status):
        raise place.key("status").error("must be pending, approved, rejected or revoked")
    texts = {key: _text(item, place, key) if key in item else "" for key in _TEXTS}
    times = {key: _time(item, place, key) if key in item else None for key in _TIMES}
    expires = times["expires"]
    if expires is not None and status != Status.APPROVED:
        raise place.key("expires").error("only an approved subscription has an expiry")
    return Subscription(
        tenant=tenant,
        client=client,
        api=api,
        status=Status(status),
        requested_at=times["requested_at"],
        decided_at=times["decided_at"],
        expires_at=math.inf if expires is None else expires,
        **texts,
    )


def _text(item: LineMap, place: Place, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise place.key(key).error("must be a non-empty string (quote names that YAML reads as numbers)")
    return value


def _time(item: LineMap, place: Place, key: str) -> float:
    try:
        return parse_time(item.get(key))
    except ValueError as exc:
        raise place.key(key).error(str(exc)) from None


def render_subscription_file(records: Sequence[Subscription]) -> str:
    """The file holding ``records`` (sorted by tenant, API, client), as the parser reads it."""
    items = []
    for record in sorted(records, key=lambda r: r.key):
        item: dict[str, Any] = {
            "tenant": record.tenant,
            "client": record.client,
            "api": record.api,
            "status": record.status.value,
        }
        for key in _TEXTS:
            if getattr(record, key):
                item[key] = getattr(record, key)
        for key, value in (
            ("requested_at", record.requested_at),
            ("decided_at", record.decided_at),
            ("expires", None if record.expires_at == math.inf else record.expires_at),
        ):
            if value is not None:
                item[key] = format_time(value)
        items.append(item)
    body = yaml.safe_dump({"subscriptions": items}, sort_keys=False, allow_unicode=False, width=1000)
    return _HEADER + body
