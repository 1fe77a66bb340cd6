"""Tenant policy: tenants, rules, tenant resolution and rule evaluation.

Rules are compiled when the configuration is loaded; evaluation is a pure
function of a snapshot, a request and verified claims.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authz.core.claims import Claims
from authz.errors import AuthzError, Reason

__all__ = [
    "DEFAULT_CLIENT_CLAIMS",
    "Api",
    "Mode",
    "Rule",
    "SenderConstraint",
    "Tenant",
    "TenantIndex",
    "client_of",
    "compile_path",
    "overlap",
    "require",
]

# The claims naming a token's client application, in order, unless a tenant names its own:
# azp (OpenID Connect's authorized party), then client_id (RFC 9068, RFC 8693).
DEFAULT_CLIENT_CLAIMS = ("azp", "client_id")


class Mode(enum.Enum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"


class SenderConstraint(enum.Enum):
    """Whether bearer tokens are accepted (``optional``) or only sender-constrained ones."""

    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; the first whose methods and paths match a request decides."""

    name: str
    methods: frozenset[str]  # empty: any method
    paths: tuple[re.Pattern[str], ...]
    public: bool
    scopes: frozenset[str]  # all required
    roles: frozenset[str]  # any of (empty: no role needed)
    claims: Mapping[str, Any]  # each claim must equal (or, for a list claim, contain) the value
    sender_constraint: SenderConstraint | None = None  # None: the tenant's
    api: str | None = None  # the API the rule belongs to (one of the tenant's apis)
    subscription: bool = False  # that API requires the client's approved subscription

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return any(p.fullmatch(path) for p in self.paths)


@dataclass(frozen=True, slots=True)
class Api:
    """A named API of a tenant: its rules name it; it may require approved subscriptions."""

    name: str
    subscription: bool = False  # subscription: required


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    issuers: frozenset[str]
    audiences: frozenset[str]
    hosts: tuple[str, ...]
    mode: Mode
    rules: tuple[Rule, ...]
    # Decryption kids allowed for tokens without a JWS -> the issuers such a token may
    # name: the shared key is the only proof of its maker, so it speaks for those alone.
    encrypt_only_keys: Mapping[str, frozenset[str]]
    sender_constraint: SenderConstraint = SenderConstraint.OPTIONAL
    # Canonical public origins (scheme://host[:port]) a DPoP proof's htu may name; empty:
    # the scheme and Host Envoy reports.
    origins: tuple[str, ...] = ()
    apis: Mapping[str, Api] = field(default_factory=dict)
    # The claims naming a token's client application, the first present decides.
    client_claims: tuple[str, ...] = DEFAULT_CLIENT_CLAIMS
    # The issuer whose client ids the tenant's subscriptions name: a client id is the issuer's
    # name for an application, so another issuer's same id is another application. None: the
    # tenant has no API requiring subscriptions and several issuers (nothing to look up).
    client_issuer: str | None = None

    def match(self, method: str, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule
        return None


@dataclass(frozen=True, slots=True)
class TenantIndex:
    """Tenants by name, by exact host and by ``*.`` suffix (longest suffix first)."""

    by_name: Mapping[str, Tenant]
    by_host: Mapping[str, Tenant]
    by_suffix: tuple[tuple[str, Tenant], ...]
    # Issuers serving several tenants: their tokens must name their tenant.
    shared_issuers: frozenset[str]

    def for_request(self, context_tenant: str | None, host: str) -> Tenant | None:
        """The request's tenant: Envoy's per-route context extension, else the host.

        A context extension naming no configured tenant is a deny, not a fallback:
        it is a route configuration error that must not widen access.
        """
        if context_tenant:
            tenant = self.by_name.get(context_tenant)
            if tenant is None:
                raise AuthzError(Reason.TENANT_UNKNOWN, "context extension names no tenant")
            return tenant
        tenant = self.by_host.get(host)
        if tenant is not None:
            return tenant
        for suffix, candidate in self.by_suffix:
            if host.endswith(suffix) and len(host) > len(suffix):
                return candidate
        return None


def client_of(tenant: Tenant, claims: Claims) -> str | None:
    """The token's client application: the first of the tenant's client claims it has, if that
    is a non-empty string; None when it has none (a subscription cannot be looked up)."""
    raw = claims.raw
    for name in tenant.client_claims:
        value = raw.get(name)
        if value is not None:
            return value if isinstance(value, str) and value else None
    return None


def require(rule: Rule, claims: Claims) -> tuple[str, ...]:
    """Check a rule's requirements against verified claims.

    Returns the scopes that are missing (empty when all are held), because the
    caller names them in ``www-authenticate``; raises AuthzError for roles and
    claims.
    """
    missing = tuple(sorted(rule.scopes - claims.scopes))
    if missing:
        return missing
    if rule.roles and not (rule.roles & claims.roles):
        raise AuthzError(Reason.ROLE_MISSING)
    for name, expected in rule.claims.items():
        actual = claims.raw.get(name)
        if isinstance(actual, list):
            # Same strictness as for a single value: True must not match 1, nor 1 match 1.0.
            if not any(v == expected and type(v) is type(expected) for v in actual):
                raise AuthzError(Reason.CLAIM_MISMATCH)
        elif actual != expected or type(actual) is not type(expected):
            raise AuthzError(Reason.CLAIM_MISMATCH)
    return ()


def compile_path(pattern: str) -> re.Pattern[str]:
    """``/orders/*`` (one segment), ``/admin/**`` (any rest, including none).

    Raises ValueError for a pattern that is not absolute or misplaces ``**``.
    """
    if not pattern.startswith("/"):
        raise ValueError("a path pattern must start with /")
    segments = pattern.split("/")[1:]
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise ValueError("** may only be the last segment")
            parts.append("(?:/.*)?")
        elif segment == "*":
            parts.append("/[^/]+")
        elif "*" in segment:
            raise ValueError("* must be a whole segment")
        elif segment in (".", ".."):
            raise ValueError("dot segments are not allowed in patterns")
        elif not segment and index != len(segments) - 1:
            # Normalized paths never contain "//": such a rule could never match.
            raise ValueError("empty segment (//) in pattern")
        else:
            parts.append("/" + re.escape(segment))
    regex = "".join(parts)
    if segments == ["**"]:
        regex = "/.*"
    return re.compile(regex or "/")


_ONE = object()  # `*`: one non-empty segment
_REST = object()  # `**`: any rest of segments, including none


def _tokens(pattern: str) -> list[object]:
    return [_REST if seg == "**" else _ONE if seg == "*" else seg for seg in pattern.split("/")[1:]]


def overlap(first: str, second: str) -> str | None:
    """A path both patterns (valid for compile_path) match, or None when no path matches both.

    Exact for the pattern language: a literal segment, ``*`` (any one non-empty segment) and a
    last ``**`` (any rest, including none), compared segment by segment.
    """
    a, b = _tokens(first), _tokens(second)
    segments: list[str] = []
    while True:
        if a and a[0] is _REST:
            segments += [_instance(t) for t in b if t is not _REST]
            break
        if b and b[0] is _REST:
            segments += [_instance(t) for t in a]
            break
        if not a or not b:
            if a or b:
                return None
            break
        x, y = a.pop(0), b.pop(0)
        if isinstance(x, str) and isinstance(y, str):
            if x != y:
                return None
            segments.append(x)
        elif isinstance(x, str) or isinstance(y, str):
            literal = x if isinstance(x, str) else y
            if not literal:  # an empty (last) segment is not one `*` matches
                return None
            segments.append(str(literal))
        else:
            segments.append("x")
    return "/" + "/".join(segments)


def _instance(token: object) -> str:
    return token if isinstance(token, str) else "x"
