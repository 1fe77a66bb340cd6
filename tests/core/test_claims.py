"""Claims: time rules at the clock-skew boundaries, lifetime, types, audiences, scopes, roles, tenant."""

from __future__ import annotations

import json

import pytest

from authz.config import SnapshotHolder
from authz.core.claims import ClaimRules, validate_claims
from authz.errors import AuthzError
from authz.grpc.servicer import check
from testkit.dpop import INVALID_TOKEN_CHALLENGE
from testkit.world import ACME_IDP, NOW, check_request

SKEW = 30
MAX_LIFETIME = 3600
RULES = ClaimRules(clock_skew=SKEW, max_lifetime=MAX_LIFETIME, tenant_claim="tenant")


def payload(**overrides):
    """Valid claims at NOW with no iat/nbf unless given; ``None`` removes a claim."""
    claims = {"iss": ACME_IDP, "sub": "user-1", "aud": "orders-api", "tenant": "acme", "exp": NOW + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def reason(claims, rules=RULES):
    """The reason code validate_claims raises, or "ok"."""
    try:
        validate_claims(claims, rules, NOW)
    except AuthzError as exc:
        return exc.code
    return "ok"


# -- time claims at the skew boundaries ----------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # exp: valid while now - skew < exp
        ({"exp": NOW + 1}, "ok"),
        ({"exp": NOW}, "ok"),
        ({"exp": NOW - SKEW + 1}, "ok"),
        ({"exp": NOW - SKEW + 0.5}, "ok"),
        ({"exp": NOW - SKEW}, "token_expired"),
        ({"exp": NOW - SKEW - 1}, "token_expired"),
        ({"exp": 0}, "token_expired"),
        ({"exp": -1}, "token_expired"),
        # nbf: valid from nbf - skew
        ({"nbf": NOW}, "ok"),
        ({"nbf": NOW + SKEW}, "ok"),
        ({"nbf": NOW + SKEW + 1}, "token_not_yet_valid"),
        ({"nbf": NOW + SKEW + 0.5}, "token_not_yet_valid"),
        # iat: not after now + skew
        ({"iat": NOW}, "ok"),
        ({"iat": NOW + SKEW}, "ok"),
        ({"iat": NOW + SKEW + 1}, "iat_in_future"),
        ({"iat": NOW - 100}, "ok"),
    ],
)
def test_time_claims_at_skew_boundaries(overrides, expected):
    """exp, nbf and iat are compared with the clock allowing exactly the configured skew."""
    assert reason(payload(**overrides)) == expected


def test_zero_skew_is_exact():
    """With clock_skew 0 a token expires at exp and becomes valid at nbf."""
    rules = ClaimRules(clock_skew=0, max_lifetime=MAX_LIFETIME, tenant_claim="tenant")
    assert reason(payload(exp=NOW), rules) == "token_expired"
    assert reason(payload(exp=NOW + 1), rules) == "ok"
    assert reason(payload(nbf=NOW + 1), rules) == "token_not_yet_valid"
    assert reason(payload(nbf=NOW), rules) == "ok"
    assert reason(payload(iat=NOW + 1), rules) == "iat_in_future"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # from iat
        ({"iat": NOW, "exp": NOW + MAX_LIFETIME}, "ok"),
        ({"iat": NOW, "exp": NOW + MAX_LIFETIME + 1}, "lifetime_exceeded"),
        ({"iat": NOW - 3000, "exp": NOW + 700}, "lifetime_exceeded"),
        # iat wins over nbf
        ({"iat": NOW - 100, "nbf": NOW, "exp": NOW + MAX_LIFETIME - 50}, "lifetime_exceeded"),
        ({"iat": NOW - 100, "nbf": NOW, "exp": NOW + MAX_LIFETIME - 100}, "ok"),
        # from nbf when there is no iat
        ({"nbf": NOW - 100, "exp": NOW - 100 + MAX_LIFETIME}, "ok"),
        ({"nbf": NOW - 100, "exp": NOW - 100 + MAX_LIFETIME + 1}, "lifetime_exceeded"),
        # from now when there is neither
        ({"exp": NOW + MAX_LIFETIME}, "ok"),
        ({"exp": NOW + MAX_LIFETIME + 1}, "lifetime_exceeded"),
        ({"exp": 1e308}, "lifetime_exceeded"),
    ],
)
def test_max_lifetime(overrides, expected):
    """exp may be at most max_lifetime after iat, else nbf, else now."""
    assert reason(payload(**overrides)) == expected


# -- types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": None}, "exp_missing"),
        ({"exp": True}, "claims_malformed"),
        ({"exp": False}, "claims_malformed"),
        ({"exp": str(NOW + 300)}, "claims_malformed"),
        ({"exp": [NOW + 300]}, "claims_malformed"),
        ({"exp": {"v": 1}}, "claims_malformed"),
        ({"exp": 10**400}, "claims_malformed"),
        ({"exp": float("inf")}, "claims_malformed"),
        ({"exp": float("nan")}, "claims_malformed"),
        ({"nbf": True}, "claims_malformed"),
        ({"nbf": "now"}, "claims_malformed"),
        ({"nbf": 10**400}, "claims_malformed"),
        ({"iat": True}, "claims_malformed"),
        ({"iat": "0"}, "claims_malformed"),
        ({"iat": -(10**400)}, "claims_malformed"),
        ({"iss": None}, "issuer_unknown"),
        ({"iss": 5}, "issuer_unknown"),
        ({"sub": 5}, "claims_malformed"),
        ({"sub": "user\n1"}, "claims_malformed"),
        ({"sub": "user\x00"}, "claims_malformed"),
        ({"sub": "user\x7f"}, "claims_malformed"),
        ({"sub": "\u2028"}, "claims_malformed"),
        ({"tenant": 5}, "claims_malformed"),
        ({"tenant": ["acme"]}, "claims_malformed"),
        ({"tenant": "ac\rme"}, "claims_malformed"),
        ({"aud": 5}, "claims_malformed"),
        ({"aud": ["orders-api", 5]}, "claims_malformed"),
        ({"aud": {"orders-api": True}}, "claims_malformed"),
        ({"scope": ["orders:read"]}, "claims_malformed"),
        ({"scope": 5}, "claims_malformed"),
        ({"scope": "orders:read \x00"}, "claims_malformed"),
        ({"scope": "orders:read bad\x7fscope"}, "claims_malformed"),
        ({"scp": [1]}, "claims_malformed"),
        ({"scp": ["orders:read", "x\ny"]}, "claims_malformed"),
        ({"scp": {"a": 1}}, "claims_malformed"),
        ({"roles": 5}, "claims_malformed"),
        ({"roles": ["admin", None]}, "claims_malformed"),
        ({"roles": {"admin": True}}, "claims_malformed"),
    ],
)
def test_wrong_types(overrides, expected):
    """A claim of the wrong type (bool or string time, huge number, control characters) is rejected."""
    assert reason(payload(**overrides)) == expected


# -- typed results ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("aud", "audiences"),
    [
        ("orders-api", ("orders-api",)),
        (["orders-api", "billing"], ("orders-api", "billing")),
        ([], ()),
        (None, ()),
    ],
)
def test_audiences(aud, audiences):
    """aud is a string or a list of strings; missing is no audience."""
    assert validate_claims(payload(aud=aud), RULES, NOW).audiences == audiences


@pytest.mark.parametrize(
    ("overrides", "scopes"),
    [
        ({"scope": "orders:read orders:write"}, {"orders:read", "orders:write"}),
        ({"scope": "orders:read"}, {"orders:read"}),
        ({"scope": ""}, set()),
        ({"scope": "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~ x"}, {"a!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "x"}),
        ({"scp": ["orders:read", "admin"]}, {"orders:read", "admin"}),
        ({"scp": "orders:read admin"}, {"orders:read", "admin"}),
        ({"scp": []}, set()),
        ({"scope": "a", "scp": ["b"]}, {"a"}),
        ({}, set()),
    ],
)
def test_scopes(overrides, scopes):
    """Scopes come from scope (space-separated) or, without it, from scp (list, or a scope string)."""
    assert validate_claims(payload(**overrides), RULES, NOW).scopes == scopes


@pytest.mark.parametrize(
    "overrides",
    [
        # Issue 19, finding 6: one scope string that "contains" orders:read and orders:write
        # when split on any whitespace; RFC 6749 separates scope tokens by U+0020 only.
        {"scope": "profile\x1forders:read\u3000orders:write"},
        {"scope": "orders:read\torders:write"},
        {"scope": "orders:read\norders:write"},
        {"scope": "orders:read\xa0orders:write"},  # no-break space
        {"scope": "orders:read\u2028orders:write"},
        {"scope": "orders:read\x85orders:write"},  # NEL
        # Empty scope tokens: RFC 6749 §3.3 has exactly one space between tokens.
        {"scope": " orders:read"},
        {"scope": "orders:read "},
        {"scope": "orders:read  orders:write"},
        {"scope": " "},
        # Characters outside NQCHAR: the double quote, the backslash, anything not ASCII.
        {"scope": 'orders:"read"'},
        {"scope": "orders\\read"},
        {"scope": "commandes:lecture-\xe9t\xe9"},
        {"scope": "orders:read \u7528\u6237"},
        {"scp": ["orders:read orders:write"]},
        {"scp": [""]},
        {"scp": ["orders:read", " admin"]},
        {"scp": ["orders:read", "\u7528\u6237"]},
        {"scp": "orders:read\u3000orders:write"},
        {"scp": "orders:read  admin"},
        {"scope": None, "scp": ['x"y']},
    ],
)
def test_scope_grammar_is_rfc_6749(overrides):
    """scope/scp: NQCHAR tokens separated by single spaces, or claims_malformed; never re-split."""
    assert reason(payload(**overrides)) == "claims_malformed"


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": "  admin  "},  # issue 19: HTTP trims it, and the upstream would read "admin"
        {"sub": " admin"},
        {"sub": "admin "},
        {"sub": "admin\t"},
        {"sub": "\tadmin"},
        {"sub": "ad\tmin"},
        {"sub": ""},
        {"sub": " "},
        {"sub": "\u7528\u6237-1"},  # 用户-1: the HTTP door could not send it as Latin-1
        {"sub": "jos\xe9"},  # Latin-1, but the gRPC door hands Envoy UTF-8: the bytes would differ
        {"sub": "admin\u3000"},
        {"sub": "\u00a0admin"},
        {"sub": "admin\x85"},
        {"sub": "admin\u200b"},  # zero-width space: looks like "admin"
        {"tenant": " acme"},
        {"tenant": "acme "},
        {"tenant": ""},
        {"tenant": "acm\xe9"},
    ],
)
def test_identity_values_are_sent_as_they_are_or_refused(overrides):
    """sub and the tenant claim: printable US-ASCII, no surrounding whitespace; else claims_malformed."""
    assert reason(payload(**overrides)) == "claims_malformed"


@pytest.mark.parametrize(
    "subject",
    [
        "user-1",
        "user 1",
        "a",
        "~",
        "248289761001",
        "mailto:a.b@example.com",
        "https://idp.test/u/1?x=1",
        'a"b\\c',
    ],
)
def test_identity_values_are_kept_exactly(subject):
    """An accepted subject is the claim, byte for byte: nothing trimmed or rewritten."""
    assert validate_claims(payload(sub=subject), RULES, NOW).subject == subject


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["admin", "user"], {"admin", "user"}),
        ([], set()),
        (None, set()),
        ("admin user", {"admin", "user"}),
        ("", set()),
        (["Order Admin"], {"Order Admin"}),  # list entries are compared as they are
    ],
)
def test_roles(roles, expected):
    """Roles come from the roles list, or a string split on single spaces."""
    assert validate_claims(payload(roles=roles), RULES, NOW).roles == expected


@pytest.mark.parametrize("roles", ["admin\u3000user", "admin\tuser", "admin  user", " admin", "admin "])
def test_roles_string_is_split_on_single_spaces_only(roles):
    """A roles string is not split on other whitespace, nor has empty entries: claims_malformed."""
    assert reason(payload(roles=roles)) == "claims_malformed"


def test_typed_claims():
    """Issuer, subject, tenant, exp and the raw payload are carried over."""
    claims = validate_claims(payload(email_verified=True), RULES, NOW)
    assert (claims.issuer, claims.subject, claims.tenant) == (ACME_IDP, "user-1", "acme")
    assert claims.expires_at == NOW + 300
    assert claims.raw["email_verified"] is True


def test_missing_subject_and_tenant_are_none():
    """A token without sub or tenant claim has None for them."""
    claims = validate_claims(payload(sub=None, tenant=None), RULES, NOW)
    assert (claims.subject, claims.tenant) == (None, None)


def test_configured_tenant_claim_name():
    """The tenant is read from the configured claim name, not from "tenant"."""
    rules = ClaimRules(clock_skew=SKEW, max_lifetime=MAX_LIFETIME, tenant_claim="org")
    claims = validate_claims(payload(tenant="globex", org="acme"), rules, NOW)
    assert claims.tenant == "acme"
    assert reason(payload(org=["acme"]), rules) == "claims_malformed"


# -- end to end through the Check service ------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"exp": NOW - SKEW}, "token_expired"),
        ({"exp": NOW - SKEW + 1, "iat": NOW - 100, "nbf": NOW - 100}, "ok"),
        ({"nbf": NOW + SKEW + 1}, "token_not_yet_valid"),
        ({"nbf": NOW + SKEW}, "ok"),
        ({"iat": NOW + SKEW + 1, "nbf": None}, "iat_in_future"),
        ({"exp": None}, "exp_missing"),
        ({"exp": True}, "claims_malformed"),
        ({"exp": str(NOW + 300)}, "claims_malformed"),
        ({"exp": 10**400}, "claims_malformed"),
        ({"iat": NOW, "exp": NOW + MAX_LIFETIME + 1}, "lifetime_exceeded"),
        ({"iat": None, "nbf": None, "exp": NOW + MAX_LIFETIME + 1}, "lifetime_exceeded"),
        ({"aud": "billing"}, "audience_mismatch"),
        ({"aud": None}, "audience_mismatch"),
        ({"aud": ["billing", "orders-api"]}, "ok"),
        ({"aud": 5}, "claims_malformed"),
        ({"sub": "user\x01"}, "claims_malformed"),
        ({"sub": "  admin  "}, "claims_malformed"),
        ({"sub": "\u7528\u6237-1"}, "claims_malformed"),
        ({"scope": "orders:read \x00"}, "claims_malformed"),
        ({"scope": "profile\x1forders:read\u3000orders:write"}, "claims_malformed"),
        ({"scope": None, "scp": ["orders:read"]}, "ok"),
    ],
)
def test_claims_end_to_end(world, config, overrides, code):
    """Claim rules decide a real Check: exact reason, HTTP 401, gRPC UNAUTHENTICATED, invalid_token."""
    token = world.token(world.claims(**overrides))
    response = check(SnapshotHolder(config), check_request(token=token), lambda: NOW)
    if code == "ok":
        assert response.status.code == 0
        assert response.HasField("ok_response")
        return
    assert response.status.code == 16
    denied = response.denied_response
    assert denied.status.code == 401
    body = json.loads(denied.body)
    assert body == {"error": "invalid_token", "reason": code, "request_id": "req-1"}
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE
    assert response.dynamic_metadata.fields["reason"].string_value == code
