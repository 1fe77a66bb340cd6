"""authz/response.py: other spellings of the identity headers are removed by every answer that lets a
request through (allow, public rule, dry-run deny), through both doors; a deny names nothing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.core.answer import IDENTITY_HEADERS, identity_spellings
from authz.core.decision import Decision, Verdict
from authz.grpc.messages import to_check_response
from authz.http.wire import to_http_response

TOKEN_ALLOW = Decision(
    Verdict.ALLOW,
    "ok",
    tenant="acme",
    rule="read-orders",
    subject="user-1",
    scopes=("orders:read",),
    identity=True,
)
PUBLIC_ALLOW = Decision(Verdict.ALLOW, "ok", tenant="acme", rule="health")
DRY_RUN_DENY = Decision(Verdict.DRY_RUN_DENY, "token_missing", tenant="dry", rule="read-orders")
DENY = Decision(
    Verdict.DENY, "scope_missing", tenant="acme", rule="read-orders", missing_scopes=("orders:read",)
)
LETS_THROUGH = {"token": TOKEN_ALLOW, "public": PUBLIC_ALLOW, "dry-run": DRY_RUN_DENY}

# How a CGI upstream names a header (the strictest servers map every non-alphanumeric character to "_").
OURS_AS_CGI = {re.sub("[^A-Z0-9]", "_", name.upper()) for name in IDENTITY_HEADERS}
# RFC 9110 token characters besides letters and digits: what a header name may hold.
SEPARATORS = "!#$%&'*+-.^_`|~"


def cgi(name: str) -> str:
    return re.sub("[^A-Z0-9]", "_", name.upper())


@pytest.mark.parametrize(
    "name",
    ["x_authz_subject", "x_authz_scopes", "x_authz_tenant", "X_Authz-Scopes", "x-authz_subject",
     "X_AUTHZ_TENANT", "x.authz.subject", "x-authz~scopes"],
)  # fmt: skip
def test_every_other_spelling_is_named_as_seen(name: str) -> None:
    """Underscores for dashes, any case, other separators: named once, spelled as the request spelled it."""
    assert identity_spellings(["host", name, "authorization", name]) == [name]


@pytest.mark.parametrize(
    "name",
    ["x-authz-subject", "X-Authz-Subject", "X-AUTHZ-SCOPES", "x-authz-roles", "x_authz_roles",
     "x_authz_subjects", "x__authz_subject", "xauthz_subject", "content-length", "accept-language", ""],
)  # fmt: skip
def test_our_own_names_and_other_headers_are_not_named(name: str) -> None:
    """Our names (set or removed by every allow anyway, in any case) and names no upstream reads as ours."""
    assert identity_spellings([name]) == []


def _spellings() -> st.SearchStrategy[str]:
    """Names an upstream might read as one of ours: any case, any separators."""
    word = st.sampled_from([n.removeprefix("x-authz-") for n in IDENTITY_HEADERS])
    sep = st.sampled_from(SEPARATORS)
    cased = st.lists(st.booleans(), min_size=20, max_size=20)
    return st.tuples(sep, sep, word, cased).map(
        lambda t: "".join(
            c.upper() if up else c for c, up in zip(f"x{t[0]}authz{t[1]}{t[2]}", t[3], strict=False)
        )
    )


@given(name=_spellings())
def test_no_spelling_of_ours_passes_an_allow(name: str) -> None:
    """Whatever the spelling, the answer overwrites it (our name, any case) or removes it as spelled."""
    for decision in LETS_THROUGH.values():
        response = to_check_response(decision, "rid", [name])
        ok = response.ok_response
        handled = {h.header.key for h in ok.headers} | set(ok.headers_to_remove)
        assert name.lower() in handled or name in ok.headers_to_remove
        # Removing another spelling never removes ours: Envoy's header names are case-insensitive.
        assert not {n.lower() for n in identity_spellings([name])} & set(IDENTITY_HEADERS)


@given(
    name=st.text(
        alphabet=st.sampled_from("xauthzsbjecopn" + "XAUTHZSBJECOPN" + SEPARATORS + "09"), max_size=16
    )
)
def test_only_names_read_as_ours_are_named(name: str) -> None:
    """No false positive: a name is named exactly when a CGI upstream reads it as ours and it is not ours."""
    expected = [name] if cgi(name) in OURS_AS_CGI and name.lower() not in IDENTITY_HEADERS else []
    assert identity_spellings([name]) == expected


@pytest.mark.parametrize("kind", LETS_THROUGH)
def test_both_doors_remove_the_spellings_the_request_carried(kind: str) -> None:
    """gRPC: headers_to_remove; HTTP: x-envoy-auth-headers-to-remove; beside what they removed already."""
    decision = LETS_THROUGH[kind]
    carried = ["host", "x_authz_subject", "x-authz_scopes", "x-authz-subject", "authorization"]
    ok = to_check_response(decision, "rid", carried).ok_response
    assert {"x_authz_subject", "x-authz_scopes"} <= set(ok.headers_to_remove)
    assert "x-authz-tenant" in {h.header.key for h in ok.headers}
    status, headers, body = to_http_response(decision, "rid", carried)
    assert (status, body) == (200, b"")
    (removed,) = [value for name, value in headers if name == "x-envoy-auth-headers-to-remove"]
    assert removed.split(",") == list(ok.headers_to_remove)
    # Without them, the answers are what they were.
    plain = to_check_response(decision, "rid", ["host"]).ok_response
    assert [n for n in ok.headers_to_remove if n not in plain.headers_to_remove] == [
        "x_authz_subject",
        "x-authz_scopes",
    ]


def test_a_deny_names_nothing() -> None:
    """A denied request never reaches the upstream: nothing to remove, and the answer is unchanged."""
    carried = ["x_authz_subject"]
    assert to_check_response(DENY, "rid", carried) == to_check_response(DENY, "rid")
    assert to_http_response(DENY, "rid", carried) == to_http_response(DENY, "rid")
    assert not to_check_response(DENY, "rid", carried).HasField("ok_response")
