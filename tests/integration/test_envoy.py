"""End to end: real Envoy (ext_authz gRPC V3, fail closed) -> our server -> echo upstream.

One Envoy and one authz server (in-process, clock at NOW) per module. The blocking
HTTP calls run in a worker thread so the server's event loop keeps running. After
every deny the test asserts the upstream recorded nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.config import Config, SnapshotHolder
from authz.grpc import servicer as service
from authz.grpc.server import RunningServer, run_server
from testkit.dpop import INVALID_TOKEN_CHALLENGE, NO_TOKEN_CHALLENGE
from testkit.envoy import (
    EchoUpstream,
    EnvoyProcess,
    HeadersArg,
    HttpResponse,
    RecordedRequest,
    envoy_config,
    http_request,
    raw_request,
    run_envoy,
)
from testkit.world import GLOBEX_IDP, NOW, World

pytestmark = pytest.mark.envoy

TENANTS_BY_DOMAIN: dict[str, str | None] = {
    "api.acme.test": "acme",
    "api.globex.test": "globex",
    "api.dry.test": "dry",
    "edge.example.test": "acme",  # not in acme's hosts: the route's context_extensions decide
}
FORGED = [
    ("x-authz-subject", "admin"),
    ("x-authz-tenant", "globex"),
    ("x-authz-tenant", "initech"),
    ("x-authz-scopes", "admin:all"),
    ("x-authz-scopes", "orders:write"),
]


@pytest.fixture(scope="module")
async def authz(config: Config) -> AsyncIterator[RunningServer]:
    """Our server, in-process on a free port, with the clock at NOW."""
    async with run_server(SnapshotHolder(config), "127.0.0.1:0", config.server, clock=lambda: NOW) as running:
        yield running


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def envoy(
    authz: RunningServer, upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyProcess]:
    """One Envoy: tenant vhosts, a host-resolved catch-all, request id echoed in responses."""
    config = envoy_config(
        authz_port=authz.port,
        upstream_port=upstream.port,
        tenants_by_domain=TENANTS_BY_DOMAIN,
        hcm_overrides={"always_set_request_id_in_response": True},
    )
    with run_envoy(config, tmp_path=Path(tmp_path_factory.mktemp("envoy"))) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _clean_upstream(upstream: EchoUpstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def token(world: World) -> str:
    """An acme token with orders:read."""
    return world.token()


async def send(
    envoy: EnvoyProcess,
    path: str = "/orders",
    *,
    method: str = "GET",
    host: str = "api.acme.test",
    token: str | None = None,
    headers: HeadersArg = (),
) -> HttpResponse:
    pairs = list(headers.items() if isinstance(headers, dict) else headers)
    if token is not None:
        pairs.insert(0, ("authorization", f"Bearer {token}"))
    return await asyncio.to_thread(http_request, envoy.port, method, path, host=host, headers=pairs)


def only_request(upstream: EchoUpstream) -> RecordedRequest:
    requests = upstream.requests
    assert len(requests) == 1, requests
    return requests[0]


def assert_denied(response: HttpResponse, upstream: EchoUpstream, status: int, reason: str) -> dict[str, Any]:
    """Our deny came back (status, JSON body with Envoy's request id) and nothing reached upstream."""
    assert response.status == status, response
    assert response.header("content-type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "reason", "request_id"}
    assert body["reason"] == reason
    assert body["request_id"]
    assert body["request_id"] == response.header("x-request-id")
    assert upstream.requests == []
    return body


async def test_allowed_request_gets_identity_and_no_forgeries(envoy, upstream, token) -> None:
    """Allowed: upstream sees exactly our x-authz-* values (forged copies gone) and no authorization."""
    response = await send(envoy, token=token, headers=FORGED)
    assert response.status == 200
    seen = only_request(upstream)
    assert seen.path == "/orders"
    assert seen.headers["x-authz-tenant"] == ["acme"]
    assert seen.headers["x-authz-subject"] == ["user-1"]
    assert seen.headers["x-authz-scopes"] == ["orders:read"]
    assert "authorization" not in seen.headers
    assert seen.header("x-request-id") == response.header("x-request-id")


async def test_missing_token_is_401_bearer(envoy, upstream) -> None:
    """No token: 401, `www-authenticate: Bearer`, our JSON body; forged identity does not help."""
    response = await send(envoy, headers=FORGED)
    body = assert_denied(response, upstream, 401, "token_missing")
    assert body["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == [NO_TOKEN_CHALLENGE]
    assert response.header("cache-control") == "no-store"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-token", "token_malformed"),
        ("Bearer a.b.c.d.e", "token_malformed"),
        ("Bearer one two", "authorization_malformed"),
        ("tampered", "decryption_failed"),
    ],
)
async def test_invalid_token_is_401_invalid_token(envoy, upstream, token, *, authorization, reason) -> None:
    """An unusable token: 401 with error="invalid_token"."""
    if authorization == "tampered":
        header, key, iv, ciphertext, tag = token.split(".")
        flipped = ("B" if ciphertext[0] == "A" else "A") + ciphertext[1:]
        authorization = "Bearer " + ".".join((header, key, iv, flipped, tag))
    response = await send(envoy, headers=[("authorization", authorization)])
    body = assert_denied(response, upstream, 401, reason)
    assert body["error"] == "invalid_token"
    assert response.headers["www-authenticate"] == [INVALID_TOKEN_CHALLENGE]


async def test_expired_token_is_401(envoy, upstream, world: World) -> None:
    """A token expired at the server's clock: 401 token_expired."""
    expired = world.token(world.claims(iat=NOW - 900, nbf=NOW - 900, exp=NOW - 600))
    assert_denied(await send(envoy, token=expired), upstream, 401, "token_expired")


async def test_garbage_authorization_bytes_are_401(envoy, upstream) -> None:
    """Non-ASCII bytes in authorization (sent raw) still get our 401, through Envoy."""
    data = (
        b"GET /orders HTTP/1.1\r\nHost: api.acme.test\r\n"
        b"Authorization: Bearer \xff\xfe\x80garbage\r\nConnection: close\r\n\r\n"
    )
    response = await asyncio.to_thread(raw_request, envoy.port, data)
    assert_denied(response, upstream, 401, "authorization_malformed")


async def test_duplicate_authorization_is_401(envoy, upstream, token) -> None:
    """Two authorization headers, one of them valid: 401, never a guess."""
    response = await send(envoy, token=token, headers=[("authorization", f"Bearer {token}")])
    assert_denied(response, upstream, 401, "authorization_malformed")


async def test_oversized_token_is_401(envoy, upstream) -> None:
    """A token above token.max_bytes (but within Envoy's header limit): 401 token_too_large."""
    assert_denied(await send(envoy, token="A" * 20_000), upstream, 401, "token_too_large")


@pytest.mark.parametrize(
    ("method", "path", "claims", "reason"),
    [
        ("GET", "/orders", {"scope": "profile"}, "scope_missing"),
        ("GET", "/admin/users", {}, "role_missing"),
        ("GET", "/admin/users", {"roles": ["admin"]}, "claim_mismatch"),
        ("POST", "/orders", {}, "no_matching_rule"),
    ],
)
async def test_forbidden_is_403(envoy, upstream, world: World, *, method, path, claims, reason) -> None:
    """A valid token the rule does not accept: 403."""
    token = world.token(world.claims(**claims))
    response = await send(envoy, path, method=method, token=token)
    body = assert_denied(response, upstream, 403, reason)
    if reason == "scope_missing":
        assert body["error"] == "insufficient_scope"
        assert response.header("www-authenticate") == 'Bearer error="insufficient_scope", scope="orders:read"'


async def test_admin_allowed(envoy, upstream, world: World) -> None:
    """The admin rule allows a verified admin (the forbidden cases above are not vacuous)."""
    token = world.token(world.claims(roles=["admin"], email_verified=True))
    assert (await send(envoy, "/admin/users", token=token)).status == 200
    assert only_request(upstream).path == "/admin/users"


@pytest.mark.parametrize("host", ["api.acme.test", "edge.example.test"])
async def test_cross_tenant_token_is_403(envoy, upstream, world: World, host: str) -> None:
    """A globex token on an acme host or route: 403 tenant_mismatch."""
    globex = world.token(world.claims(iss=GLOBEX_IDP, tenant="globex"), signing_kid="globex-es256")
    assert_denied(await send(envoy, host=host, token=globex), upstream, 403, "tenant_mismatch")
    # The same token is fine where it belongs.
    assert (await send(envoy, host="api.globex.test", token=globex)).status == 200
    assert only_request(upstream).headers["x-authz-tenant"] == ["globex"]


async def test_acme_token_on_globex_host_is_403(envoy, upstream, token) -> None:
    """An acme token on globex's vhost: 403 tenant_mismatch."""
    assert_denied(await send(envoy, host="api.globex.test", token=token), upstream, 403, "tenant_mismatch")


# Envoy 1.40 with default HCM settings (no normalize_path, no merge_slashes, escaped
# slashes kept) forwards these paths verbatim, both to us and to the upstream.
@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/orders/../admin", 403, "role_missing"),
        ("//admin", 403, "role_missing"),
        ("/orders/%2e%2e/admin", 403, "role_missing"),
        ("/orders/%2E%2E/admin/users", 403, "role_missing"),
        ("/orders%2Fadmin", 400, "path_invalid"),
        ("/orders/..%2fadmin", 400, "path_invalid"),
        ("/orders/%5c..%5cadmin", 400, "path_invalid"),
        ("/../admin", 400, "path_invalid"),
        ("/orders/..", 403, "no_matching_rule"),
        ("/orders;jsessionid=1", 400, "path_invalid"),  # segment parameters: refused by default
        ("/orders/..;/admin", 400, "path_invalid"),
        ("/orders/..%3Badmin", 400, "path_invalid"),
    ],
)
async def test_path_tricks_never_reach_upstream(envoy, upstream, token, *, path, status, reason) -> None:
    """Path tricks with an orders:read token are denied by us; the upstream sees nothing."""
    assert_denied(await send(envoy, path, token=token), upstream, status, reason)


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/healthz/../admin", 401, "token_missing"),
        ("//healthz/../admin/x", 401, "token_missing"),
        ("/healthz/..%2Fadmin", 400, "path_invalid"),
        ("/healthz/..;/admin", 400, "path_invalid"),  # Tomcat would serve /admin
    ],
)
async def test_public_path_tricks_need_a_token(envoy, upstream, path: str, status: int, reason: str) -> None:
    """A public prefix does not make a climbing path public."""
    assert_denied(await send(envoy, path), upstream, status, reason)


@pytest.mark.parametrize(
    ("path", "claims"),
    [("/orders/./1", {}), ("/orders//1", {}), ("/orders/x/../1", {}), ("/orders/../admin/users", "admin")],
)
async def test_allowed_path_tricks_reach_upstream_verbatim(envoy, upstream, world, *, path, claims) -> None:
    """What we allow after normalizing, Envoy forwards unnormalized: the upstream gets the raw path."""
    extra = {"roles": ["admin"], "email_verified": True} if claims == "admin" else {}
    response = await send(envoy, path, token=world.token(world.claims(**extra)))
    assert response.status == 200
    assert only_request(upstream).path == path


async def test_public_healthz_without_token(envoy, upstream) -> None:
    """The public rule passes without a token; forged identity headers are removed."""
    response = await send(envoy, "/healthz", headers=FORGED)
    assert response.status == 200
    seen = only_request(upstream)
    assert seen.headers["x-authz-tenant"] == ["acme"]
    assert "x-authz-subject" not in seen.headers
    assert "x-authz-scopes" not in seen.headers


async def test_route_context_extension_tenant(envoy, upstream, token) -> None:
    """A vhost mapped to acme by context_extensions works for a host acme does not list."""
    response = await send(envoy, host="edge.example.test", token=token)
    assert response.status == 200
    assert only_request(upstream).headers["x-authz-tenant"] == ["acme"]


async def test_host_resolved_tenant_on_catch_all(envoy, upstream, token) -> None:
    """Without context_extensions the tenant comes from the Host (acme's *.acme.test)."""
    assert (await send(envoy, host="shop.acme.test", token=token)).status == 200
    assert only_request(upstream).headers["x-authz-tenant"] == ["acme"]


async def test_unknown_host_without_tenant_claim_is_403(envoy, upstream, world: World) -> None:
    """No tenant from route, host or token: 403 tenant_unknown."""
    token = world.token(world.claims(tenant=None))
    assert_denied(await send(envoy, host="nobody.test", token=token), upstream, 403, "tenant_unknown")


async def test_dry_run_lets_forbidden_through(envoy, upstream, world: World) -> None:
    """Dry-run tenant: a request it would forbid reaches the upstream, with the token's identity."""
    token = world.token(world.claims(tenant="dry", scope="profile"))
    assert (await send(envoy, host="api.dry.test", token=token, headers=FORGED)).status == 200
    seen = only_request(upstream)
    assert seen.headers["x-authz-tenant"] == ["dry"]
    assert seen.headers["x-authz-subject"] == ["user-1"]
    assert "authorization" not in seen.headers


async def test_dry_run_without_token_passes_without_identity(envoy, upstream) -> None:
    """Dry-run and no token: passes, but no (forged) identity reaches the upstream."""
    assert (await send(envoy, host="api.dry.test", headers=FORGED)).status == 200
    seen = only_request(upstream)
    assert seen.headers["x-authz-tenant"] == ["dry"]
    assert "x-authz-subject" not in seen.headers
    assert "x-authz-scopes" not in seen.headers


async def test_dry_run_still_rejects_unsafe_paths(envoy, upstream, world: World) -> None:
    """Dry-run never relaxes the 400 path checks."""
    token = world.token(world.claims(tenant="dry"))
    response = await send(envoy, "/orders%2F..%2Fadmin", host="api.dry.test", token=token)
    assert_denied(response, upstream, 400, "path_invalid")


async def test_envoy_request_id_in_deny_body(envoy, upstream) -> None:
    """Our deny body carries the x-request-id Envoy generated for the request."""
    first = await send(envoy)
    second = await send(envoy)
    ids = [assert_denied(r, upstream, 401, "token_missing")["request_id"] for r in (first, second)]
    assert ids[0] != ids[1]
    assert all(len(i) == 36 for i in ids)  # Envoy's UUID4s


async def test_unbuildable_answer_reaches_the_client_as_our_500(
    envoy, upstream, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allow whose response cannot be built (a subject protobuf cannot encode): our 500 internal_error
    deny, body included, reaches the client (Envoy relays a gRPC deny as it is), the upstream nothing."""
    real = service.to_check_response

    def unsendable(decision: Any, *args: Any) -> Any:
        subject = "\ud800" if decision.subject else None  # a lone surrogate: UTF-8 cannot carry it
        return real(dataclasses.replace(decision, subject=subject), *args)

    monkeypatch.setattr(service, "to_check_response", unsendable)
    # A token of its own: the module's token is answered from the answer memo by now, as kept.
    response = await send(envoy, token=world.token(world.claims(sub="user-unbuildable")))
    assert assert_denied(response, upstream, 500, "internal_error")["error"] == "server_error"
