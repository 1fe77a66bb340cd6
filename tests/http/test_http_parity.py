"""Same request, same decision: every case through the gRPC door and through the HTTP door."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from authz.config import Config, SnapshotHolder
from authz.http.door import HttpDoor
from authz.telemetry.recorder import Telemetry
from testkit.doors import via_grpc, via_http
from testkit.world import CONTENT_ENCRYPTIONS, INNER_ALGS, NOW, OUTER_ALGS, World

Case = tuple[str, Callable[[World], dict[str, Any]]]
# Spellings an upstream that follows CGI reads as ours (lower case: both doors see Envoy's names).
SPELLINGS = {
    "x_authz_subject": "root",
    "x-authz_scopes": "admin:all",
    "x_authz-tenant": "globex",
    "x.authz.subject": "r",
}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


CASES: list[Case] = [
    ("allow", lambda w: {"headers": _bearer(w.token())}),
    ("missing-token", lambda w: {"headers": {}}),
    ("basic-scheme", lambda w: {"headers": {"authorization": "Basic dXNlcjpwYXNz"}}),
    ("garbage-token", lambda w: {"headers": _bearer("a.b.c.d.e")}),
    ("jws-not-jwe", lambda w: {"headers": _bearer("eyJhbGciOiJub25lIn0.e30.")}),
    ("expired", lambda w: {"headers": _bearer(w.token(w.claims(exp=NOW - 100, iat=NOW - 200, nbf=NOW - 200)))}),
    ("no-scope", lambda w: {"headers": _bearer(w.token(w.claims(scope="other")))}),
    ("admin-no-role", lambda w: {"path": "/admin/users", "headers": _bearer(w.token())}),
    ("admin-ok", lambda w: {"path": "/admin/x", "headers": _bearer(w.token(w.claims(roles=["admin"], email_verified=True)))}),
    ("dot-dot-admin", lambda w: {"path": "/orders/../admin", "headers": _bearer(w.token())}),
    ("encoded-dots", lambda w: {"path": "/orders/%2e%2e/admin", "headers": _bearer(w.token())}),
    ("encoded-slash", lambda w: {"path": "/orders%2Fadmin", "headers": _bearer(w.token())}),
    ("escape-root", lambda w: {"path": "/../etc", "headers": _bearer(w.token())}),
    ("query-dropped", lambda w: {"path": "/orders?x=1", "headers": _bearer(w.token())}),
    ("public-no-token", lambda w: {"path": "/healthz", "headers": {"x-authz-subject": "forged"}}),
    ("no-rule", lambda w: {"path": "/nothing", "headers": _bearer(w.token())}),
    ("post-not-allowed", lambda w: {"method": "POST", "headers": _bearer(w.token())}),
    ("cross-tenant", lambda w: {"host": "api.globex.test", "headers": _bearer(w.token())}),
    ("wildcard-host", lambda w: {"host": "eu.acme.test", "headers": _bearer(w.token())}),
    ("unknown-host-token-tenant", lambda w: {"host": "unknown.test", "headers": _bearer(w.token())}),
    ("unknown-host-no-tenant", lambda w: {"host": "unknown.test", "headers": _bearer(w.token(w.claims(tenant=None)))}),
    ("dry-run", lambda w: {"host": "api.dry.test", "headers": _bearer(w.token(w.claims(tenant="dry", scope="x")))}),
    ("encrypt-only", lambda w: {"host": "api.legacy.test", "headers": _bearer(w.token(w.claims(tenant="legacy"), outer="A256KW", inner=None))}),
    ("encrypt-only-refused", lambda w: {"headers": _bearer(w.token(outer="A256KW", inner=None))}),
    ("two-tokens", lambda w: {"headers": {"authorization": f"Bearer {w.token()} x"}}),
    ("forged-identity", lambda w: {"headers": {**_bearer(w.token()), "x-authz-tenant": "globex", "x-authz-subject": "root"}}),
    ("forged-spellings", lambda w: {"headers": {**_bearer(w.token()), **SPELLINGS}}),
    ("public-forged-spellings", lambda w: {"path": "/healthz", "headers": SPELLINGS}),
    ("dry-run-forged-spellings", lambda w: {"host": "api.dry.test", "headers": SPELLINGS}),
    ("deny-forged-spellings", lambda w: {"headers": {**_bearer(w.token(w.claims(scope="other"))), **SPELLINGS}}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build"), CASES, ids=[c[0] for c in CASES])
def test_both_doors_decide_alike(
    world: World, config: Config, name: str, build: Callable[[World], dict[str, Any]]
) -> None:
    """Decision, status, reason code, challenge and identity headers are the same through both doors."""
    spec = {"method": "GET", "path": "/orders", "host": "api.acme.test", **build(world)}
    assert via_http(config, **spec) == via_grpc(config, **spec)


def test_repeats_through_the_memo_decide_alike(world: World, config: Config) -> None:
    """Every case, three times over through one door (repeats may come from its memo): same as gRPC."""
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(), config.http)
    specs = [
        {"method": "GET", "path": "/orders", "host": "api.acme.test", **build(world)} for _, build in CASES
    ]
    expected = [via_grpc(config, **spec) for spec in specs]
    for _ in range(3):
        assert [via_http(config, **spec, door=door) for spec in specs] == expected
    assert door.memo_hits > 0


MATRIX = [(o, i, e) for o in OUTER_ALGS for i in INNER_ALGS for e in CONTENT_ENCRYPTIONS]


@pytest.mark.parametrize(("outer", "inner", "enc"), MATRIX, ids=["/".join(m) for m in MATRIX])
def test_algorithm_matrix_alike(world: World, config: Config, outer: str, inner: str, enc: str) -> None:
    """Every algorithm pair is allowed, with the same identity, through both doors."""
    spec = {"method": "GET", "path": "/orders", "host": "api.acme.test",
            "headers": _bearer(world.token(outer=outer, inner=inner, enc=enc))}  # fmt: skip
    grpc_answer, http_answer = via_grpc(config, **spec), via_http(config, **spec)
    assert grpc_answer.status == 200
    assert http_answer == grpc_answer


def test_http_door_never_answers_with_an_exception(world: World, config: Config) -> None:
    """answer() turns any fault into a deny: a config whose tenants lookup fails still answers."""
    door = HttpDoor(SnapshotHolder(None), lambda: float(NOW), Telemetry(), config.http)
    answer = door.answer("GET", "/orders", {"host": ("api.acme.test",)})
    assert isinstance(answer, bytes)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert asyncio.iscoroutinefunction(HttpDoor.stop)
