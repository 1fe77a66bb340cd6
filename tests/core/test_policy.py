"""Tenant resolution, tenant binding, rules, dry-run, encrypt-only and the Check response."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from authz.config import SnapshotHolder, load_config
from authz.core.decision import Verdict, decide
from authz.grpc._proto.envoy.config.core.v3.base_pb2 import HeaderValueOption
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz.grpc.messages import from_check_request
from authz.grpc.servicer import check
from testkit.dpop import INVALID_TOKEN_CHALLENGE, NO_TOKEN_CHALLENGE
from testkit.world import GLOBEX_IDP, NOW, SHARED_IDP, check_request

IDENTITY = ("x-authz-tenant", "x-authz-subject", "x-authz-scopes")
SMUGGLED = {"x-authz-tenant": "globex", "x-authz-subject": "root", "x-authz-scopes": "admin"}


@dataclass
class Result:
    """A CheckResponse read the way Envoy reads it."""

    response: CheckResponse

    @property
    def allowed(self) -> bool:
        return self.response.HasField("ok_response")

    @property
    def grpc(self) -> int:
        return self.response.status.code

    @property
    def http(self) -> int:
        return 200 if self.allowed else self.response.denied_response.status.code

    @property
    def headers(self) -> dict[str, str]:
        part = self.response.ok_response if self.allowed else self.response.denied_response
        return {h.header.key: h.header.value for h in part.headers}

    @property
    def removed(self) -> list[str]:
        return list(self.response.ok_response.headers_to_remove)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.response.denied_response.body)

    @property
    def meta(self) -> dict[str, str]:
        return {k: v.string_value for k, v in self.response.dynamic_metadata.fields.items()}

    @property
    def reason(self) -> str:
        return self.meta["reason"]


def run(config, token=None, **request) -> Result:
    """One Check through the service, at the tests' clock."""
    return Result(check(SnapshotHolder(config), check_request(token=token, **request), lambda: NOW))


def globex_claims(world, **overrides):
    return world.claims(**{"iss": GLOBEX_IDP, "tenant": "globex", **overrides})


def assert_denied(result: Result, reason: str, http: int, grpc: int) -> None:
    assert not result.allowed
    assert (result.reason, result.http, result.grpc) == (reason, http, grpc)
    assert result.body["reason"] == reason
    assert result.meta["decision"] == "deny"


# -- tenant resolution -----------------------------------------------------------


def test_context_extension_beats_host(world, config):
    """The route's context_extensions tenant decides, not the host."""
    token = world.token(globex_claims(world), signing_kid="globex-es256")
    result = run(config, token, host="api.acme.test", tenant="globex")
    assert result.allowed
    assert result.meta["tenant"] == "globex"
    assert result.headers["x-authz-tenant"] == "globex"
    acme = run(config, world.token(), host="api.acme.test", tenant="globex")
    assert_denied(acme, "tenant_mismatch", 403, 7)


def test_unknown_context_tenant_is_denied(world, config):
    """A context extension naming no configured tenant is tenant_unknown 403, never a host fallback."""
    assert_denied(run(config, world.token(), tenant="nobody"), "tenant_unknown", 403, 7)
    assert_denied(run(config, path="/healthz", tenant="nobody"), "tenant_unknown", 403, 7)


@pytest.mark.parametrize(
    ("host", "tenant"),
    [
        ("api.acme.test", "acme"),
        ("API.ACME.TEST", "acme"),
        ("api.acme.test:8443", "acme"),
        ("eu.acme.test", "acme"),
        ("a.b.c.acme.test", "acme"),
        ("eu.acme.test:443", "acme"),
        ("api.globex.test", "globex"),
        ("api.initech.test", "initech"),
        ("acme.test", None),
        ("evilacme.test", None),
        ("api.acme.test.evil", None),
        ("unknown.test", None),
        ("", None),
    ],
)
def test_tenant_from_host(config, host, tenant):
    """The host picks the tenant, exactly or by *. suffix (any depth, never the bare suffix)."""
    request = from_check_request(check_request(host=host, path="/healthz"))
    assert config.snapshot.tenants.for_request(None, request.host) is (
        config.snapshot.tenants.by_name[tenant] if tenant else None
    )


@pytest.mark.parametrize("host", ["x.acme.test", "a.b.acme.test", "api.acme.test:8443"])
def test_public_rule_on_suffix_host(config, host):
    """A *.acme.test host reaches acme's public rule without a token."""
    result = run(config, host=host, path="/healthz")
    assert result.allowed
    assert result.meta["rule"] == "health"


@pytest.mark.parametrize("host", ["acme.test", "evilacme.test", "unknown.test"])
def test_public_rule_needs_the_tenant_host(config, host):
    """Without a tenant from route or host there is no public rule: token_missing 401."""
    result = run(config, host=host, path="/healthz")
    assert_denied(result, "token_missing", 401, 16)
    assert result.headers["www-authenticate"] == NO_TOKEN_CHALLENGE


def test_unknown_host_falls_back_to_token_tenant(world, config):
    """At a host of no tenant, the token's tenant claim picks the tenant."""
    result = run(config, world.token(), host="unknown.test")
    assert result.allowed
    assert (result.meta["tenant"], result.meta["rule"]) == ("acme", "read-orders")


@pytest.mark.parametrize(
    ("claims", "kid"),
    [
        ({"tenant": None}, None),
        ({"tenant": "nobody"}, None),
        ({"tenant": None, "iss": SHARED_IDP}, "shared-es256"),
    ],
)
def test_no_tenant_anywhere(world, config, claims, kid):
    """No tenant from route, host or token (or a token naming an unknown one) is tenant_unknown 403."""
    token = world.token(world.claims(**claims), signing_kid=kid)
    assert_denied(run(config, token, host="unknown.test"), "tenant_unknown", 403, 7)


@pytest.mark.parametrize("header", ["x-authz-tenant", "x-tenant", "tenant", "x-envoy-tenant"])
def test_client_headers_never_choose_a_tenant(world, config, header):
    """A client header naming a tenant is ignored: host and token decide."""
    at_acme = run(config, world.token(), headers={header: "globex"})
    assert at_acme.allowed
    assert at_acme.meta["tenant"] == "acme"
    assert at_acme.headers["x-authz-tenant"] == "acme"
    no_tenant = run(config, host="unknown.test", path="/healthz", headers={header: "acme"})
    assert_denied(no_tenant, "token_missing", 401, 16)
    globex_token = world.token(globex_claims(world), signing_kid="globex-es256")
    assert_denied(run(config, globex_token, headers={header: "globex"}), "tenant_mismatch", 403, 7)


# -- cross-tenant tokens ---------------------------------------------------------------


def test_globex_token_at_acme_host(world, config):
    """A globex token at an acme host is tenant_mismatch 403."""
    token = world.token(globex_claims(world), signing_kid="globex-es256")
    result = run(config, token)
    assert_denied(result, "tenant_mismatch", 403, 7)
    assert result.meta["tenant"] == "acme"


def test_shared_issuer_token_needs_tenant_claim(world, config):
    """A token from an issuer shared by tenants must name its tenant."""
    without = world.token(world.claims(iss=SHARED_IDP, tenant=None), signing_kid="shared-es256")
    assert_denied(run(config, without), "tenant_mismatch", 403, 7)
    assert_denied(run(config, without, host="api.initech.test"), "tenant_mismatch", 403, 7)
    acme = world.token(world.claims(iss=SHARED_IDP), signing_kid="shared-es256")
    assert run(config, acme).allowed
    assert_denied(run(config, acme, host="api.initech.test"), "tenant_mismatch", 403, 7)
    initech = world.token(world.claims(iss=SHARED_IDP, tenant="initech"), signing_kid="shared-es256")
    assert run(config, initech, host="api.initech.test").allowed


def test_own_issuer_token_without_tenant_claim(world, config):
    """A token from an issuer of one tenant only needs no tenant claim; acme's IdP (3 tenants) does."""
    token = world.token(globex_claims(world, tenant=None), signing_kid="globex-es256")
    assert run(config, token, host="api.globex.test").allowed
    assert_denied(run(config, world.token(world.claims(tenant=None))), "tenant_mismatch", 403, 7)


def test_issuer_of_another_tenant(world, config):
    """A token naming this tenant but signed by another tenant's issuer is issuer_not_allowed 403."""
    token = world.token(world.claims(iss=GLOBEX_IDP), signing_kid="globex-es256")
    assert_denied(run(config, token), "issuer_not_allowed", 403, 7)


def test_audience_mismatch(world, config):
    """A token for another audience is audience_mismatch 401."""
    result = run(config, world.token(world.claims(aud=["billing", "shipping"])))
    assert_denied(result, "audience_mismatch", 401, 16)
    assert result.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE


# -- rules --------------------------------------------------------------------------------


ADMIN = {"roles": ["admin"], "email_verified": True}


@pytest.mark.parametrize(
    ("call", "claims", "expected"),
    [
        (("GET", "/orders"), {}, ("read-orders", "ok")),
        (("HEAD", "/orders/17"), {}, ("read-orders", "ok")),
        (("GET", "/orders/17?x=1"), {}, ("read-orders", "ok")),
        (("get", "/orders/17"), {}, (None, "request_malformed")),  # methods are case-sensitive
        (("GET", "/orders/"), {}, (None, "no_matching_rule")),
        (("GET", "/orders/17/items"), {}, (None, "no_matching_rule")),
        (("POST", "/orders"), {}, (None, "no_matching_rule")),
        (("DELETE", "/orders/17"), {}, (None, "no_matching_rule")),
        (("GET", "/ordersx"), {}, (None, "no_matching_rule")),
        (("GET", "/"), {}, (None, "no_matching_rule")),
        (("GET", "/admin"), ADMIN, ("admin", "ok")),
        (("DELETE", "/admin/"), ADMIN, ("admin", "ok")),
        (("POST", "/admin/users/1/keys"), ADMIN, ("admin", "ok")),
        (("GET", "/adminx"), ADMIN, (None, "no_matching_rule")),
        (("GET", "/admin"), {}, ("admin", "role_missing")),
        (("GET", "/orders/../admin"), {}, ("admin", "role_missing")),
        (("GET", "//admin"), {}, ("admin", "role_missing")),
        (("GET", "/orders/%2e%2e/admin"), {}, ("admin", "role_missing")),
        (("GET", "/orders/%2E%2E/admin/x"), {}, ("admin", "role_missing")),
        (("GET", "/./admin//x"), {}, ("admin", "role_missing")),
        (("GET", "/%61dmin"), {}, ("admin", "role_missing")),
        (("GET", "/orders"), {"scope": "orders:write"}, ("read-orders", "scope_missing")),
        (("GET", "/orders"), {"scope": None}, ("read-orders", "scope_missing")),
        (("GET", "/admin"), {"roles": ["user"], "email_verified": True}, ("admin", "role_missing")),
        (("GET", "/admin"), {"roles": ["admin"]}, ("admin", "claim_mismatch")),
        (("GET", "/admin"), {"roles": ["admin"], "email_verified": False}, ("admin", "claim_mismatch")),
        (("GET", "/admin"), {"roles": ["admin"], "email_verified": "true"}, ("admin", "claim_mismatch")),
        (("GET", "/admin"), {"roles": ["admin"], "email_verified": 1}, ("admin", "claim_mismatch")),
        (("GET", "/admin"), {"roles": ["admin"], "email_verified": [1]}, ("admin", "claim_mismatch")),
        (("GET", "/admin"), {"roles": ["admin"], "email_verified": [False, True]}, ("admin", "ok")),
        (("GET", "/admin"), {"roles": ["user", "admin"], "email_verified": True}, ("admin", "ok")),
    ],
)
def test_rule_matching_and_requirements(world, config, call, claims, expected):
    """Methods, * (one segment), ** (any rest) on the normalized path; then scopes, roles, claims."""
    (method, path), (rule, reason) = call, expected
    result = run(config, world.token(world.claims(**claims)), method=method, path=path)
    assert result.meta.get("rule") == rule
    assert result.reason == reason
    assert result.allowed is (reason == "ok")
    if reason != "ok":
        assert (result.http, result.grpc) == ((400, 3) if reason == "request_malformed" else (403, 7))


def test_scope_missing_challenge(world, config):
    """scope_missing names the missing scope in an insufficient_scope challenge."""
    result = run(config, world.token(world.claims(scope="profile")))
    assert_denied(result, "scope_missing", 403, 7)
    assert result.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="orders:read"'
    assert result.body["error"] == "insufficient_scope"


@pytest.mark.parametrize("reason", ["role_missing", "no_matching_rule"])
def test_other_policy_denies_have_no_challenge(world, config, reason):
    """role_missing and no_matching_rule are 403 without www-authenticate."""
    path = "/admin" if reason == "role_missing" else "/nothing"
    result = run(config, world.token(), path=path)
    assert_denied(result, reason, 403, 7)
    assert "www-authenticate" not in result.headers
    assert result.body["error"] == "forbidden"


def test_public_rule_without_token(config):
    """A public rule allows without a token and passes no identity, whatever the client sent."""
    result = run(config, path="/healthz", headers=SMUGGLED)
    assert result.allowed
    assert result.grpc == 0
    assert result.headers == {"x-authz-tenant": "acme"}
    assert {"x-authz-subject", "x-authz-scopes"} <= set(result.removed)
    assert result.meta == {"decision": "allow", "reason": "ok", "tenant": "acme", "rule": "health"}


def test_public_rule_ignores_bad_token(config):
    """A public rule is decided before the token, so a broken token does not deny it."""
    result = run(config, token="not-a-token", path="/healthz")
    assert result.allowed
    assert "x-authz-subject" in result.removed


def test_token_missing(config):
    """No token on a protected rule is 401 with a bare Bearer challenge and error unauthorized."""
    result = run(config)
    assert_denied(result, "token_missing", 401, 16)
    assert result.headers["www-authenticate"] == NO_TOKEN_CHALLENGE
    assert result.body == {"error": "unauthorized", "reason": "token_missing", "request_id": "req-1"}


# -- first match wins, list claims, strip_authorization off ---------------------------------


@pytest.fixture(scope="module")
def custom_config(world, tmp_path_factory):
    """A second config over the world's key files (absolute paths)."""
    keys = world.root / "keys"
    path = tmp_path_factory.mktemp("custom") / "config.yaml"
    path.write_text(
        f"""\
decryption:
  keys: [{keys / "decrypt.jwks.json"}]
issuers:
  - issuer: https://idp.acme.test
    jwks: {keys / "acme-idp.jwks.json"}
tenants:
  - name: acme
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.acme.test]
    rules:
      - name: first
        methods: [GET]
        paths: [/orders/*]
        scopes: [orders:read]
      - name: ops
        paths: [/ops/**]
        claims: {{groups: ops}}
      - name: second
        paths: [/orders/special, "/**"]
""",
        encoding="utf-8",
    )
    return load_config(path)


@pytest.mark.parametrize(
    ("call", "scope", "expected"),
    [
        (("GET", "/orders/special"), "orders:read", ("first", "ok")),
        (("GET", "/orders/special"), None, ("first", "scope_missing")),
        (("POST", "/orders/special"), None, ("second", "ok")),
        (("GET", "/orders/a/b"), None, ("second", "ok")),
        (("GET", "/"), None, ("second", "ok")),
    ],
)
def test_first_matching_rule_wins(world, custom_config, call, scope, expected):
    """The first rule matching method and path decides; a later rule is never a fallback."""
    method, path = call
    result = run(custom_config, world.token(world.claims(scope=scope)), method=method, path=path)
    assert (result.meta["rule"], result.reason) == expected


@pytest.mark.parametrize(
    ("groups", "reason"),
    [(["dev", "ops"], "ok"), ("ops", "ok"), (["dev"], "claim_mismatch"), (None, "claim_mismatch")],
)
def test_claim_rule_on_list_claim(world, custom_config, groups, reason):
    """A claim requirement is met by an equal value or by a list that contains it."""
    result = run(custom_config, world.token(world.claims(groups=groups)), path="/ops/x")
    assert result.reason == reason


def test_authorization_kept_without_strip(world, custom_config):
    """With strip_authorization off (default) the authorization header is passed on."""
    result = run(custom_config, world.token())
    assert result.allowed
    assert "authorization" not in result.removed


# -- dry-run -------------------------------------------------------------------------------


def dry_claims(world, **overrides):
    return world.claims(**{"tenant": "dry", **overrides})


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (None, "token_missing"),
        ({"scope": "profile"}, "scope_missing"),
        ({"exp": NOW - 3600}, "token_expired"),
        ({"tenant": "acme"}, "tenant_mismatch"),
    ],
)
def test_dry_run_allows_and_records(world, config, claims, reason):
    """A dry-run tenant allows but records the would-be deny in the dynamic metadata."""
    token = None if claims is None else world.token(dry_claims(world, **claims))
    result = run(config, token, host="api.dry.test")
    assert result.allowed
    assert result.grpc == 0
    assert result.meta["decision"] == "dry-run-deny"
    assert result.meta["reason"] == reason
    assert result.meta["tenant"] == "dry"
    assert result.headers["x-authz-tenant"] == "dry"


def test_dry_run_policy_deny_passes_identity(world, config):
    """A dry-run policy deny of a valid token still passes the verified identity."""
    result = run(config, world.token(dry_claims(world, scope="profile")), host="api.dry.test")
    assert result.headers["x-authz-subject"] == "user-1"
    assert result.headers["x-authz-scopes"] == "profile"


def test_dry_run_token_deny_passes_no_identity(world, config):
    """A dry-run deny of the token passes no subject or scopes."""
    result = run(
        config, world.token(dry_claims(world, exp=NOW - 3600)), host="api.dry.test", headers=SMUGGLED
    )
    assert {"x-authz-subject", "x-authz-scopes"} <= set(result.removed)
    assert result.headers == {"x-authz-tenant": "dry"}


def test_dry_run_allow_is_plain_allow(world, config):
    """A request the dry-run tenant would allow is recorded as allow."""
    result = run(config, world.token(dry_claims(world)), host="api.dry.test")
    assert result.meta["decision"] == "allow"
    assert result.meta["reason"] == "ok"


@pytest.mark.parametrize("path", ["/orders/%2F..", "/../orders", "/orders\\x"])
def test_dry_run_still_rejects_invalid_paths(world, config, path):
    """path_invalid is 400 INVALID_ARGUMENT even for a dry-run tenant."""
    result = run(config, world.token(dry_claims(world)), host="api.dry.test", path=path)
    assert not result.allowed
    assert (result.http, result.grpc) == (400, 3)
    assert result.body == {"error": "invalid_request", "reason": "path_invalid", "request_id": "req-1"}
    assert result.meta["decision"] == "deny"


def test_dry_run_decision_verdict(world, config):
    """decide() returns the DRY_RUN_DENY verdict, which counts as allowed."""
    request = from_check_request(check_request(host="api.dry.test"))
    decision = decide(config.snapshot, request, NOW)
    assert decision.verdict is Verdict.DRY_RUN_DENY
    assert decision.allowed
    assert decision.reason == "token_missing"


# -- encrypt-only ----------------------------------------------------------------------------


@pytest.mark.parametrize("outer", ["A256KW", "dir"])
def test_encrypt_only_for_opted_in_keys(world, config, outer):
    """The legacy tenant accepts encrypt-only tokens with its opted-in symmetric keys."""
    token = world.token(world.claims(tenant="legacy"), outer=outer, inner=None)
    result = run(config, token, host="api.legacy.test", path="/anything")
    assert result.allowed
    assert result.meta["tenant"] == "legacy"


@pytest.mark.parametrize(
    ("outer", "host", "tenant"),
    [
        ("A256KW", "api.acme.test", "acme"),
        ("dir", "api.acme.test", "acme"),
        ("A128GCMKW", "api.legacy.test", "legacy"),
        ("RSA-OAEP-256", "api.legacy.test", "legacy"),
        ("RSA-OAEP", "api.legacy.test", "legacy"),
        ("ECDH-ES", "api.legacy.test", "legacy"),
        ("RSA-OAEP-256", "api.acme.test", "acme"),
    ],
)
def test_encrypt_only_not_allowed(world, config, outer, host, tenant):
    """Encrypt-only is refused for tenants or keys not opted in, and never for public-key JWE."""
    token = world.token(world.claims(tenant=tenant), outer=outer, inner=None)
    assert_denied(run(config, token, host=host, path="/orders"), "encrypt_only_not_allowed", 401, 16)


@pytest.fixture(scope="module")
def partners_config(world, tmp_path_factory):
    """A tenant with two issuers and one encrypt-only key bound to each (real key files, the loader)."""
    keys = world.root / "keys"
    path = tmp_path_factory.mktemp("partners") / "config.yaml"
    path.write_text(
        f"""\
decryption:
  keys: [{keys / "decrypt.jwks.json"}]
issuers:
  - issuer: https://idp.acme.test
    jwks: {keys / "acme-idp.jwks.json"}
  - issuer: https://idp.globex.test
    jwks: {keys / "globex-idp.jwks.json"}
tenants:
  - name: partners
    issuers: [https://idp.acme.test, https://idp.globex.test]
    audiences: [orders-api]
    hosts: [api.partners.test]
    encrypt_only_keys:
      - kid: enc-a256kw
        issuers: [https://idp.acme.test]
      - kid: enc-dir
        issuers: [https://idp.globex.test]
    rules:
      - name: everything
        paths: ["/**"]
""",
        encoding="utf-8",
    )
    return load_config(path)


@pytest.mark.parametrize(
    ("outer", "issuer", "reason"),
    [
        ("A256KW", "https://idp.acme.test", "ok"),
        ("dir", "https://idp.globex.test", "ok"),
        # Issue 19: the holder of one tenant key claimed another issuer of the tenant.
        ("A256KW", "https://idp.globex.test", "encrypt_only_not_allowed"),
        ("dir", "https://idp.acme.test", "encrypt_only_not_allowed"),
        # Keys the tenant did not opt in stay refused whatever the issuer.
        ("A128GCMKW", "https://idp.acme.test", "encrypt_only_not_allowed"),
    ],
)
def test_encrypt_only_key_speaks_only_for_its_issuers(world, partners_config, outer, issuer, reason):
    """An encrypt-only token is accepted only when its iss is one its key is bound to."""
    token = world.token(world.claims(iss=issuer, tenant="partners"), outer=outer, inner=None)
    result = run(partners_config, token, host="api.partners.test", path="/anything")
    if reason == "ok":
        assert result.allowed
        assert result.meta["tenant"] == "partners"
    else:
        assert_denied(result, reason, 401, 16)


def test_signed_tokens_of_both_issuers_are_unaffected(world, partners_config):
    """The binding is about encrypt-only tokens: nested tokens of either issuer, with either key, pass."""
    for outer in ("A256KW", "dir"):
        acme = world.token(world.claims(tenant="partners"), outer=outer)
        globex = world.token(
            world.claims(iss=GLOBEX_IDP, tenant="partners"), outer=outer, signing_kid="globex-es256"
        )
        assert run(partners_config, acme, host="api.partners.test").allowed
        assert run(partners_config, globex, host="api.partners.test").allowed


def test_nested_token_with_symmetric_key_at_acme(world, config):
    """A nested (signed) token is fine with a symmetric outer key for any tenant."""
    assert run(config, world.token(outer="A256KW")).allowed


# -- allow response -----------------------------------------------------------------------------


def test_identity_headers_overwrite(world, config):
    """Identity headers are set with OVERWRITE_IF_EXISTS_OR_ADD over the client's copies."""
    result = run(config, world.token(world.claims(scope="orders:read profile")), headers=SMUGGLED)
    assert result.headers == {
        "x-authz-tenant": "acme",
        "x-authz-subject": "user-1",
        "x-authz-scopes": "orders:read profile",
    }
    actions = {h.append_action for h in result.response.ok_response.headers}
    assert actions == {HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}
    assert not set(IDENTITY) & set(result.removed)


def test_absent_identity_values_are_removed(world, config):
    """An identity value the token lacks is removed, so a client's copy never passes."""
    token = world.token(world.claims(tenant="legacy", sub=None, scope=None), outer="A256KW", inner=None)
    result = run(config, token, host="api.legacy.test", headers=SMUGGLED)
    assert result.allowed
    assert result.headers == {"x-authz-tenant": "legacy"}
    assert {"x-authz-subject", "x-authz-scopes"} <= set(result.removed)


def test_strip_authorization(world, config):
    """With strip_authorization the authorization header is removed on allow."""
    assert "authorization" in run(config, world.token()).removed
    assert "authorization" in run(config, path="/healthz").removed


def test_dynamic_metadata_on_allow(world, config):
    """Allow metadata carries decision, reason, tenant, rule and subject."""
    result = run(config, world.token())
    assert result.meta == {
        "decision": "allow",
        "reason": "ok",
        "tenant": "acme",
        "rule": "read-orders",
        "subject": "user-1",
    }


def test_dynamic_metadata_on_deny(world, config):
    """Deny metadata carries decision, reason, tenant and rule."""
    result = run(config, world.token(), path="/admin")
    assert result.meta == {
        "decision": "deny",
        "reason": "role_missing",
        "tenant": "acme",
        "rule": "admin",
        "subject": "user-1",
    }


# -- deny body ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "path", "expected"),
    [
        ({"exp": NOW - 3600}, "/orders", ("token_expired", "invalid_token")),
        ({"aud": "billing"}, "/orders", ("audience_mismatch", "invalid_token")),
        ({"tenant": "globex"}, "/orders", ("tenant_mismatch", "forbidden")),
        ({}, "/admin", ("role_missing", "forbidden")),
        ({"scope": "x"}, "/orders", ("scope_missing", "insufficient_scope")),
    ],
)
def test_deny_body_is_small_and_has_no_token(world, config, claims, path, expected):
    """The deny body is exactly {error, reason, request_id} and nothing carries the token."""
    reason, error = expected
    token = world.token(world.claims(**claims))
    result = run(config, token, path=path, request_id="trace-42")
    assert result.body == {"error": error, "reason": reason, "request_id": "trace-42"}
    assert result.headers["content-type"] == "application/json"
    assert result.headers["cache-control"] == "no-store"
    serialized = result.response.SerializeToString()
    for piece in token.split("."):
        if len(piece) > 8:
            assert piece.encode() not in serialized


def test_token_cannot_choose_a_dry_run_tenant_it_does_not_belong_to(world, config) -> None:
    """At a host no tenant serves, a token naming the dry-run tenant but from a foreign issuer is denied."""
    token = world.token(world.claims(iss="https://idp.globex.test", tenant="dry"), signing_kid="globex-es256")
    response = check(SnapshotHolder(config), check_request(host="unknown.test", token=token), lambda: NOW)
    assert response.status.code == 7
    assert json.loads(response.denied_response.body)["reason"] == "issuer_not_allowed"


def test_token_bound_to_a_dry_run_tenant_gets_dry_run(world, config) -> None:
    """At a host no tenant serves, a token that belongs to the dry-run tenant gets its dry-run allow."""
    token = world.token(world.claims(tenant="dry", scope="other"))
    response = check(SnapshotHolder(config), check_request(host="unknown.test", token=token), lambda: NOW)
    assert response.status.code == 0
    assert response.dynamic_metadata.fields["decision"].string_value == "dry-run-deny"


def test_fully_qualified_host_resolves_like_the_plain_name(world, config) -> None:
    """'api.acme.test.' (trailing dot) is the acme host."""
    response = check(
        SnapshotHolder(config), check_request(host="api.acme.test.", path="/healthz"), lambda: NOW
    )
    assert response.status.code == 0
