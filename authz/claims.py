"""Claims: the verified payload checked against the clock and typed.

jwcrypto's own claim checks are partial (``iat`` never compared to the clock,
no maximum lifetime, ``exp`` optional unless asked), so this is its own step,
with an injectable clock: tests never sleep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.errors import AuthzError

__all__ = ["ClaimRules", "Claims", "validate_claims"]


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
        raise AuthzError("issuer_unknown")
    if "exp" not in payload:
        raise AuthzError("exp_missing")
    exp = _number(payload["exp"], "exp")
    nbf = _number(payload["nbf"], "nbf") if "nbf" in payload else None
    iat = _number(payload["iat"], "iat") if "iat" in payload else None
    skew = rules.clock_skew
    if now - skew >= exp:
        raise AuthzError("token_expired")
    if nbf is not None and now + skew < nbf:
        raise AuthzError("token_not_yet_valid")
    if iat is not None and iat > now + skew:
        raise AuthzError("iat_in_future")
    start = iat if iat is not None else nbf if nbf is not None else now
    if exp - start > rules.max_lifetime:
        raise AuthzError("lifetime_exceeded")
    return Claims(
        issuer=issuer,
        subject=_optional_str(payload, "sub"),
        audiences=_audiences(payload.get("aud")),
        expires_at=exp,
        valid_from=_valid_from(iat, nbf, exp, rules),
        valid_until=exp + skew,
        tenant=_optional_str(payload, rules.tenant_claim),
        scopes=_scopes(payload),
        roles=_str_list(payload.get("roles"), "roles"),
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
        raise AuthzError("claims_malformed", f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond the float range
        raise AuthzError("claims_malformed", f"{name} is out of range") from None
    if not math.isfinite(number):
        raise AuthzError("claims_malformed", f"{name} is out of range")
    return number


def _optional_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not (isinstance(value, str) and _printable(value)):
        raise AuthzError("claims_malformed", f"{name} is not a printable string")
    return value


def _printable(value: str) -> bool:
    # Values that become upstream header values: no control characters.
    return value.isprintable()


def _audiences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthzError("claims_malformed", "aud is neither a string nor a list of strings")


def _scopes(payload: Mapping[str, Any]) -> frozenset[str]:
    scope = payload.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise AuthzError("claims_malformed", "scope is not a string")
        # Split first, then check each scope as for scp: they become a header value.
        return _str_list(scope.split(), "scope")
    return _str_list(payload.get("scp"), "scp")


def _str_list(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, list) and all(isinstance(v, str) and _printable(v) for v in value):
        return frozenset(value)
    raise AuthzError("claims_malformed", f"{name} is not a list of printable strings")
