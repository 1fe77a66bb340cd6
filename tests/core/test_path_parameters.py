"""Path segment parameters (``;``): refused by default, or removed before matching; both doors alike.

Issue 19, finding 7: ``/healthz/..;/admin`` was matched literally and so by a
public ``/healthz/**`` rule, while Servlet containers (Tomcat, Jetty, Spring)
drop ``;...`` from each segment before resolving dot segments and serve
``/admin``. By default a path with parameters is 400 ``path_invalid``; with
``request.path_parameters: strip`` the rules see the path as such an upstream
does. An encoded ``;`` (``%3B``) is refused either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.config import Config, load_config
from testkit.doors import Answer, via_grpc, via_http
from testkit.world import World

POLICY = """\
decryption:
  keys: [{keys}/decrypt.jwks.json]
issuers:
  - issuer: https://idp.acme.test
    jwks: {keys}/acme-idp.jwks.json
{request}tenants:
  - name: acme
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.acme.test]
    rules:
      - name: health
        paths: [/healthz/**]
        public: true
      - name: read-orders
        paths: [/orders, /orders/*]
        scopes: [orders:read]
      - name: admin
        paths: [/admin/**]
        roles: [admin]
  - name: dry
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.dry.test]
    mode: dry-run
    rules:
      - name: health
        paths: [/healthz/**]
        public: true
"""


def policy(world: World, folder: Path, request: str) -> Config:
    path = folder / "config.yaml"
    path.write_text(POLICY.format(keys=world.root / "keys", request=request), encoding="utf-8")
    return load_config(path)


@pytest.fixture(scope="module")
def rejecting(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The default: no request section at all."""
    return policy(world, tmp_path_factory.mktemp("reject"), "")


@pytest.fixture(scope="module")
def stripping(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return policy(world, tmp_path_factory.mktemp("strip"), "request:\n  path_parameters: strip\n")


def both(config: Config, path: str, token: str | None = None, host: str = "api.acme.test") -> Answer:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    spec = {"method": "GET", "path": path, "host": host, "headers": headers}
    grpc, http = via_grpc(config, **spec), via_http(config, **spec)
    assert grpc == http  # the same answer from both doors, always
    return grpc


@pytest.mark.parametrize(
    "path",
    [
        "/healthz/..;/admin",
        "/healthz/..;x=1/admin/users",
        "/healthz;/../admin",
        "/healthz/x;y",
        "/orders;jsessionid=ABC",
        "/;",
    ],
)
def test_parameters_are_refused_by_default(world: World, rejecting: Config, path: str) -> None:
    """Default: a path segment with parameters is 400 path_invalid, token or not, before any rule."""
    assert (both(rejecting, path).status, both(rejecting, path).reason) == (400, "path_invalid")
    answer = both(rejecting, path, world.token(world.claims(roles=["admin"])))
    assert (answer.status, answer.reason) == (400, "path_invalid")


def test_dry_run_does_not_relax_the_refusal(rejecting: Config) -> None:
    """A dry-run tenant still gets the 400: it protects the upstream, like every path check."""
    answer = both(rejecting, "/healthz/..;/admin", host="api.dry.test")
    assert (answer.status, answer.reason) == (400, "path_invalid")


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        # What a Servlet container serves is /admin: the admin rule decides, not the public one.
        ("/healthz/..;/admin", 401, "token_missing"),
        ("/healthz;/../admin", 401, "token_missing"),
        ("/healthz/..;x=1/admin/users", 401, "token_missing"),
        ("/healthz/x;y", 200, "ok"),
        ("/..;/admin", 400, "path_invalid"),  # climbs out of the root once ";" is gone
    ],
)
def test_stripped_parameters_match_what_the_upstream_serves(
    stripping: Config, path: str, status: int, reason: str
) -> None:
    """path_parameters: strip: ';...' is removed from each segment before dot segments and matching."""
    answer = both(stripping, path)
    assert (answer.status, answer.reason) == (status, reason)


def test_stripped_parameters_with_a_token(world: World, stripping: Config) -> None:
    """With strip, /orders;jsessionid=... is /orders; /healthz/..;/admin needs the admin role."""
    token = world.token()
    assert both(stripping, "/orders;jsessionid=ABC", token).status == 200
    answer = both(stripping, "/healthz/..;/admin", token)
    assert (answer.status, answer.reason) == (403, "role_missing")


@pytest.mark.parametrize("path", ["/healthz/..%3B/admin", "/healthz/..%3b/admin", "/orders%3Bx"])
def test_encoded_semicolons_are_refused_in_both_modes(
    rejecting: Config, stripping: Config, path: str
) -> None:
    """%3B is path_invalid either way: upstreams disagree on whether a decoded ';' starts parameters."""
    for config in (rejecting, stripping):
        answer = both(config, path)
        assert (answer.status, answer.reason) == (400, "path_invalid")
