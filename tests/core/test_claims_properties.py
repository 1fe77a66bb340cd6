"""Property tests of claim validation: time claims as step 7 of docs/concepts/decision.md says, identity values as they are or refused.

Examples are bounded and derandomized (tests/conftest.py keeps them independent of the run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authz.core.claims import ClaimRules, validate_claims
from authz.errors import REASONS, AuthzError
from testkit.properties import FAST, json_values
from testkit.world import NOW

# -- claims -------------------------------------------------------------------------

RULES = ClaimRules(clock_skew=30, max_lifetime=3600, tenant_claim="tenant")
time_values = st.one_of(
    st.integers(NOW - 8000, NOW + 8000),
    st.floats(NOW - 8000, NOW + 8000, allow_nan=False),
    st.sampled_from([NOW - 30, NOW + 30, NOW - 31, NOW + 31, NOW + 3600, NOW - 3600, 0, -1, 2**1100]),
)
bad_time_values = st.one_of(
    st.booleans(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=1),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, str(NOW)]),
)  # fmt: skip


def reference_time_ok(claims: Mapping[str, Any], now: float) -> bool:
    """Step 7 (docs/concepts/decision.md): exp required; nbf, iat with the skew; lifetime from iat, else nbf, else now."""
    if "exp" not in claims:
        return False
    values = {name: claims[name] for name in ("exp", "nbf", "iat") if name in claims}
    for number in values.values():
        if isinstance(number, bool) or not isinstance(number, int | float):
            return False
        try:
            if not math.isfinite(float(number)):
                return False
        except OverflowError:
            return False
    exp = float(values["exp"])
    if exp <= now - 30:
        return False
    if "nbf" in values and values["nbf"] > now + 30:
        return False
    if "iat" in values and values["iat"] > now + 30:
        return False
    start = values.get("iat", values.get("nbf", now))
    return exp - start <= 3600


@FAST
@given(
    times=st.dictionaries(st.sampled_from(["exp", "nbf", "iat"]), st.one_of(time_values, bad_time_values)),
    now=st.integers(NOW - 100, NOW + 100),
)
@example(times={"exp": NOW + 100, "iat": True}, now=NOW)
@example(times={"exp": 2**1100}, now=NOW)
@example(times={"exp": NOW - 30 + 0.5}, now=NOW)
def test_time_claims_match_the_reference(times, now):
    """Time claims: accepted exactly when the reference accepts; refusals are AuthzError only."""
    claims = {"iss": "https://idp.acme.test", "sub": "u", **times}
    try:
        validated = validate_claims(claims, RULES, now)
    except AuthzError:
        assert not reference_time_ok(claims, now)
        return
    assert reference_time_ok(claims, now)
    assert validated.expires_at == float(claims["exp"])


claim_names = st.sampled_from(["iss", "sub", "aud", "tenant", "scope", "scp", "roles", "exp", "nbf", "iat"])


@FAST
@given(payload=st.dictionaries(claim_names | st.text(max_size=4), json_values | time_values, max_size=8))
@example(payload={"iss": "x", "exp": NOW + 1, "sub": "a\nb"})
@example(payload={"iss": "x", "exp": NOW + 1, "scope": "a \x00"})
@example(payload={"iss": "x", "exp": NOW + 1, "scp": ["a", 1]})
@example(payload={"iss": "x", "exp": NOW + 1, "roles": "admin"})
def test_validate_claims_raises_only_authz_error(payload):
    """Any claims set: Claims with the documented types, or AuthzError."""
    try:
        claims = validate_claims(payload, RULES, NOW)
    except AuthzError as exc:
        code = exc.code
    else:
        code = "ok"
    assert code in {*REASONS, "ok"}
    if code != "ok":
        return
    assert isinstance(claims.issuer, str)
    assert claims.subject is None or reference_header_value(claims.subject)
    assert claims.tenant is None or reference_header_value(claims.tenant)
    assert all(isinstance(a, str) for a in claims.audiences)
    assert all(isinstance(v, str) and v and set(v) <= set(NQCHAR) for v in claims.scopes)
    assert all(isinstance(v, str) and v.isprintable() for v in claims.roles)
    assert reference_time_ok(payload, NOW)


# -- claims that become identity headers ---------------------------------------------

NQCHAR = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))  # RFC 6749 §3.3
# Characters a loose split or trim would treat as separators, and look-alikes of them.
WHITESPACE_LIKE = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
)
claim_text = st.one_of(
    st.lists(
        st.sampled_from([*NQCHAR[:8], "orders:read", '"', "\\", "é", "用户", *WHITESPACE_LIKE]), max_size=10
    ).map("".join),
    st.text(max_size=20),
)
scope_tokens = st.lists(st.text(NQCHAR, min_size=1, max_size=8), min_size=1, max_size=5)


def reference_scopes(value: str) -> frozenset[str] | None:
    """RFC 6749 §3.3 read literally (None: not that grammar); "" is no scopes."""
    if value == "":
        return frozenset()
    tokens = value.split(" ")
    if all(token and all(c in NQCHAR for c in token) for token in tokens):
        return frozenset(tokens)
    return None


def reference_header_value(value: str) -> bool:
    """Sendable as it is by both doors: printable US-ASCII, not empty, no space at either end."""
    return bool(value) and all(" " <= c <= "~" for c in value) and value[0] != " " and value[-1] != " "


def claims_or_code(**claims: Any) -> Any:
    try:
        return validate_claims({"iss": "https://idp.acme.test", "exp": NOW + 60, **claims}, RULES, NOW)
    except AuthzError as exc:
        return exc.code


@FAST
@given(value=claim_text)
@example(value="profile\x1forders:read\u3000orders:write")
@example(value="orders:read  orders:write")
@example(value=" orders:read")
@example(value="")
def test_scope_string_is_the_rfc_6749_grammar(value):
    """scope: exactly the RFC 6749 grammar (split on U+0020 only, NQCHAR tokens), else claims_malformed."""
    expected = reference_scopes(value)
    for name in ("scope", "scp"):  # scp as a string is read as a scope string
        got = claims_or_code(**{name: value})
        assert (got if isinstance(got, str) else got.scopes) == (
            expected if expected is not None else "claims_malformed"
        )


@FAST
@given(tokens=scope_tokens, data=st.data())
def test_scope_tokens_round_trip_and_any_other_separator_is_refused(tokens, data):
    """Tokens joined by single spaces give exactly those scopes; any other separator is claims_malformed."""
    assert claims_or_code(scope=" ".join(tokens)).scopes == frozenset(tokens)
    assert claims_or_code(scp=tokens).scopes == frozenset(tokens)
    separator = data.draw(st.sampled_from([*WHITESPACE_LIKE[1:], "  ", '"', "\\", "é"]))
    index = data.draw(st.integers(0, len(tokens)))
    joined = " ".join(tokens[:index]) + separator + " ".join(tokens[index:])
    assert claims_or_code(scope=joined) == "claims_malformed"


@FAST
@given(items=st.lists(claim_text, max_size=4))
@example(items=["orders:read orders:write"])
@example(items=[""])
def test_scp_list_items_are_scope_tokens(items):
    """scp as a list: each item one NQCHAR token, nothing split, else claims_malformed."""
    ok = all(item and all(c in NQCHAR for c in item) for item in items)
    got = claims_or_code(scp=items)
    assert (got.scopes == frozenset(items)) if ok else (got == "claims_malformed")


@FAST
@given(value=claim_text)
@example(value="  admin  ")
@example(value="用户-1")
@example(value="josé")
@example(value="user 1")
def test_subject_and_tenant_are_header_values_as_they_are(value):
    """sub and the tenant claim: kept byte for byte when sendable as they are, else claims_malformed."""
    for name in ("sub", "tenant"):
        got = claims_or_code(**{name: value})
        if not reference_header_value(value):
            assert got == "claims_malformed"
            continue
        kept = got.subject if name == "sub" else got.tenant
        assert kept == value
        # What both doors then send is the same bytes, and HTTP's trimming changes nothing.
        assert kept.encode("latin-1") == kept.encode("utf-8")
        assert kept.strip(" \t") == kept
