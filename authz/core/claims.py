"""Claims: the verified payload checked against an injectable clock and typed.

Values that become identity headers are taken exactly as the standards write them (scope:
RFC 6749 §3.3; sub and the tenant claim: printable US-ASCII, no surrounding space), else
``claims_malformed``: both doors send the upstream the same bytes, or nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.errors import AuthzError, Reason

__all__ = ["ClaimRules", "Claims", "validate_claims"]

# RFC 6749 §3.3: scope = scope-token *( SP scope-token ); scope-token = 1*NQCHAR,
# NQCHAR = %x21 / %x23-5B / %x5D-7E. Separators are single U+0020 only.
_NQCHARS = r"[\x21\x23-\x5b\x5d-\x7e]+"
_SCOPE = re.compile(f"{_NQCHARS}(?: {_NQCHARS})*")
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ClaimRules:
    clock_skew: int
    max_lifetime: int
    tenant_claim: str


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims the service acts on, typed; ``raw`` for rules that match claims."""

    issuer: str
    subject: str | None
    audiences: tuple[str, ...]
    expires_at: float
    # The window of ``now`` in which the time checks above pass (skew included):
    # a decision on these claims holds, as far as time goes, from..until.
    valid_from: float
    valid_until: float
    tenant: str | None
    scopes: frozenset[str]
    roles: frozenset[str]
    raw: Mapping[str, Any]


def validate_claims(payload: Mapping[str, Any], rules: ClaimRules, now: float) -> Claims:
    """Check time claims and types; raises AuthzError with the precise reason."""
    issuer = payload.get("iss")
    if not isinstance(issuer, str):
        raise AuthzError(Reason.ISSUER_UNKNOWN)
    if "exp" not in payload:
        raise AuthzError(Reason.EXP_MISSING)
    exp = _number(payload["exp"], "exp")
    nbf = _number(payload["nbf"], "nbf") if "nbf" in payload else None
    iat = _number(payload["iat"], "iat") if "iat" in payload else None
    skew = rules.clock_skew
    if now - skew >= exp:
        raise AuthzError(Reason.TOKEN_EXPIRED)
    if nbf is not None and now + skew < nbf:
        raise AuthzError(Reason.TOKEN_NOT_YET_VALID)
    if iat is not None and iat > now + skew:
        raise AuthzError(Reason.IAT_IN_FUTURE)
    start = iat if iat is not None else nbf if nbf is not None else now
    if exp - start > rules.max_lifetime:
        raise AuthzError(Reason.LIFETIME_EXCEEDED)
    return Claims(
        issuer=issuer,
        subject=_identity(payload, "sub"),
        audiences=_audiences(payload.get("aud")),
        expires_at=exp,
        valid_from=_valid_from(iat, nbf, exp, rules),
        valid_until=exp + skew,
        tenant=_identity(payload, rules.tenant_claim),
        scopes=_scopes(payload),
        roles=_roles(payload.get("roles")),
        raw=payload,
    )


def _valid_from(iat: float | None, nbf: float | None, exp: float, rules: ClaimRules) -> float:
    """The earliest ``now`` at which the checks above pass for these claims."""
    if iat is None and nbf is None:
        return exp - rules.max_lifetime  # the lifetime is counted from now: too early, too long
    return max(t for t in (iat, nbf) if t is not None) - rules.clock_skew


def _number(value: Any, name: str) -> float:
    # bool is an int in Python; a JSON true is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthzError(Reason.CLAIMS_MALFORMED, f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond the float range
        raise AuthzError(Reason.CLAIMS_MALFORMED, f"{name} is out of range") from None
    if not math.isfinite(number):
        raise AuthzError(Reason.CLAIMS_MALFORMED, f"{name} is out of range")
    return number


def _identity(payload: Mapping[str, Any], name: str) -> str | None:
    """A claim that becomes an identity header: absent (None), or a header value as it is."""
    value = payload.get(name)
    if value is None or (isinstance(value, str) and _sendable(value)):
        return value
    raise AuthzError(Reason.CLAIMS_MALFORMED, f"{name} is not printable US-ASCII without surrounding spaces")


def _sendable(value: str) -> bool:
    # RFC 9110 field-content limited to US-ASCII: no obs-text (the doors and the
    # upstreams would read its bytes differently: Latin-1 or UTF-8), no controls,
    # no space at either end (HTTP trims it: " admin " would arrive as "admin").
    # str methods, not a regex: this runs on every check and is twice as fast.
    return bool(value) and value.isascii() and value.isprintable() and value[0] != " " and value[-1] != " "


def _audiences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthzError(Reason.CLAIMS_MALFORMED, "aud is neither a string nor a list of strings")


def _scopes(payload: Mapping[str, Any]) -> frozenset[str]:
    scope = payload.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise AuthzError(Reason.CLAIMS_MALFORMED, "scope is not a string")
        return _scope_string(scope, "scope")
    scp = payload.get("scp")
    if scp is None:
        return _NONE
    if isinstance(scp, str):  # some issuers send scp as a scope string
        return _scope_string(scp, "scp")
    if isinstance(scp, list):
        if not scp:
            return _NONE
        # One match for the whole list: joined by single spaces, the items are the
        # grammar's tokens exactly when the only spaces are the ones joining them.
        try:
            joined = " ".join(scp)
        except TypeError:  # an item that is not a string
            joined = ""
        if _SCOPE.fullmatch(joined) and joined.count(" ") == len(scp) - 1:
            return frozenset(scp)
    raise AuthzError(Reason.CLAIMS_MALFORMED, "scp is not a list of scope tokens (RFC 6749 3.3)")


def _scope_string(value: str, name: str) -> frozenset[str]:
    # The grammar exactly: no leading, trailing or repeated spaces, no other
    # whitespace. The empty string is no scopes (it cannot add or hide one).
    if not value:
        return _NONE
    if _SCOPE.fullmatch(value):
        return frozenset(value.split(" "))
    raise AuthzError(
        Reason.CLAIMS_MALFORMED, f"{name} is not scope tokens separated by single spaces (RFC 6749 3.3)"
    )


def _roles(value: Any) -> frozenset[str]:
    """``roles``: a list of printable strings, or one string split on single spaces as scope is."""
    if value is None:
        return _NONE
    if isinstance(value, str):
        value = value.split(" ") if value else []
        if not all(value):  # leading, trailing or repeated spaces
            raise AuthzError(Reason.CLAIMS_MALFORMED, "roles string has empty entries")
    if isinstance(value, list) and all(isinstance(v, str) and v.isprintable() for v in value):
        return frozenset(value)
    raise AuthzError(Reason.CLAIMS_MALFORMED, "roles is not a list of printable strings")
