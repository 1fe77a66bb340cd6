"""End to end through every Envoy configuration deploy/envoy/render.py ships, both doors, in front
of a WSGI upstream: no client-supplied value ever reaches what the upstream reads as ours
(``HTTP_X_AUTHZ_*``); the request id and the trace id are Envoy's, never the client's; no method,
host or URL override and no client forwarding header reaches the upstream; a Host that is not an
authority and a method outside the standard set (exactly as sent) are refused alike by both doors;
and what Envoy forwards is decided on its connection to authz, never a reconnect (attack-19).

Each variant is rendered with its committed parameters, addresses moved to 127.0.0.1 (tests/deploy/test_deploy.py
checks the committed files are these renderings). The quick-start variants answer with a direct
response that echoes only the dashed names, so they get the WSGI upstream their Kubernetes siblings
have; everything else is as shipped. Two more runs turn Envoy's own header protections off
(``edge-off``: underscores allowed, no early header removal), one per door: authz alone must then
keep the forgeries out and refuse method overrides. One authz (gRPC door, HTTP door and admin port,
in-process, clock at NOW) serves the module; one Envoy per configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

import pytest

from authz.app.admin import run_admin
from authz.config import SnapshotHolder, load_config
from authz.grpc.server import run_server
from authz.http.door import HttpDoor
from authz.telemetry.recorder import Telemetry
from testkit.envoy import (
    EnvoyProcess,
    HttpResponse,
    WsgiUpstream,
    http_request,
    load_render,
    refused_port,
    run_envoy,
)
from testkit.h2wire import H2Connection
from testkit.world import CONFIG, NOW, World

pytestmark = pytest.mark.envoy

render = load_render()
HTTP_PREFIX = render.HTTP_PATH_PREFIX
CLIENT_REQUEST_ID = "client-chosen-0001"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Every value is marked "forged": none may appear in anything the upstream reads as a header.
FORGED = (
    ("x_authz_subject", "forged-admin"),
    ("x_authz_scopes", "forged admin:all"),
    ("x_authz_tenant", "forged-globex"),
    ("X_Authz-Scopes", "forged-mixed"),
    ("x-authz_subject", "forged-half"),
    ("X-AUTHZ-SUBJECT", "forged-upper"),  # our own name in another case: overwritten or removed
    ("x-authz-scopes", "forged-dashed"),
    ("x.authz.tenant", "forged-dotted"),  # read as ours by servers that map any separator to "_"
)
UNDERSCORED = sum("_" in name for name, _ in FORGED)


class Servers(NamedTuple):
    grpc_port: int
    http_port: int
    admin_port: int
    telemetry: Telemetry  # both doors'


class Case(NamedTuple):
    host: str
    path: str
    claims: dict[str, Any] | None  # None: no token
    expected: dict[str, str]  # what the upstream reads as our headers, exactly


CASES = {
    "public": Case("api.acme.test", "/healthz", None, {"HTTP_X_AUTHZ_TENANT": "acme"}),
    "dry-run-without-token": Case("api.dry.test", "/orders", None, {"HTTP_X_AUTHZ_TENANT": "dry"}),
    "dry-run-of-a-token": Case(
        "api.dry.test",
        "/orders",
        {"tenant": "dry", "scope": "profile"},
        {"HTTP_X_AUTHZ_TENANT": "dry", "HTTP_X_AUTHZ_SUBJECT": "user-1", "HTTP_X_AUTHZ_SCOPES": "profile"},
    ),
    "token": Case(
        "api.acme.test",
        "/orders",
        {},
        {
            "HTTP_X_AUTHZ_TENANT": "acme",
            "HTTP_X_AUTHZ_SUBJECT": "user-1",
            "HTTP_X_AUTHZ_SCOPES": "orders:read",
        },
    ),
}


def _variant_id(variant: Any) -> str:
    return str(variant.path.relative_to(render.DEPLOY))


def _first(door: str) -> Any:
    return next(v for v in render.VARIANTS if v.params.door == door)


SHIPPED, EDGE_OFF = "as-shipped", "edge-off"
# (variant, edge): as shipped, then with Envoy's own header protections off (authz alone).
CONFIGS = [(v, SHIPPED) for v in render.VARIANTS] + [(_first(door), EDGE_OFF) for door in render.DOORS]


@pytest.fixture(scope="module")
async def servers(world: World, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    """authz with both doors and its admin port (/readyz for the HTTP door's health check)."""
    root = tmp_path_factory.mktemp("authz")
    shutil.copytree(world.root / "keys", root / "keys")
    (root / "config.yaml").write_text(CONFIG + f"http:\n  path_prefix: {HTTP_PREFIX}\n")
    config = load_config(root / "config.yaml")
    holder = SnapshotHolder(config)
    telemetry = Telemetry()
    door = HttpDoor(holder, lambda: float(NOW), telemetry, config.http)
    http_port = await door.start("127.0.0.1:0")
    try:
        async with (
            run_server(holder, "127.0.0.1:0", config.server, clock=lambda: NOW, telemetry=telemetry) as grpc,
            run_admin("127.0.0.1:0", telemetry.registry, lambda: True) as admin_port,
        ):
            yield Servers(grpc.port, http_port, admin_port, telemetry)
    finally:
        await door.stop(1.0)


@pytest.fixture(scope="module")
def upstream() -> Iterator[WsgiUpstream]:
    with WsgiUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def collector() -> Iterator[int]:
    """Where the Kubernetes variants' tracer exports: a port that refuses (spans are not the point)."""
    with refused_port() as port:
        yield port


def rendered(variant: Any, action: str, servers: Servers, upstream: int, collector: int) -> dict[str, Any]:
    """The variant's configuration, rendered as committed but on 127.0.0.1 with Envoy's own ports free."""
    params = variant.params
    door_port = servers.grpc_port if params.door == "grpc" else servers.http_port
    local = dataclasses.replace(
        params,
        listen="127.0.0.1:0",
        admin="127.0.0.1:0",
        authz=f"127.0.0.1:{door_port}",
        upstream=f"127.0.0.1:{upstream}",
        otlp=None if params.otlp is None else f"127.0.0.1:{collector}",
        authz_admin_port=None if params.authz_admin_port is None else servers.admin_port,
    )
    config: dict[str, Any] = render.render(local)
    if action == EDGE_OFF:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["common_http_protocol_options"]["headers_with_underscores_action"] = "ALLOW"
        del hcm["early_header_mutation_extensions"]
    return config


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{_variant_id(c[0])}-{c[1]}")
def envoy(
    request: pytest.FixtureRequest,
    servers: Servers,
    upstream: WsgiUpstream,
    collector: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EnvoyProcess, str]]:
    """One Envoy per configuration, and whether its own header protections are on."""
    variant, action = request.param
    config = rendered(variant, action, servers, upstream.port, collector)
    # Access log lines reach the file within 50 ms, not Envoy's default 10 s: the test reads them.
    flush = ("--file-flush-interval-msec", "50")
    with run_envoy(config, tmp_path=tmp_path_factory.mktemp("envoy"), extra_args=flush) as process:
        yield process, action


async def send(envoy: EnvoyProcess, case: Case, world: World) -> HttpResponse:
    headers = [*FORGED, ("x-request-id", CLIENT_REQUEST_ID)]
    if case.claims is not None:
        headers.insert(0, ("authorization", f"Bearer {world.token(world.claims(**case.claims))}"))
    return await asyncio.to_thread(
        http_request, envoy.port, "GET", case.path, host=case.host, headers=headers
    )


def dropped(envoy: EnvoyProcess) -> int:
    return sum(envoy.stats("dropped_headers_with_underscores").values())


@pytest.mark.parametrize("name", CASES)
async def test_no_client_value_reaches_what_the_upstream_reads_as_ours(
    envoy: tuple[EnvoyProcess, str], upstream: WsgiUpstream, world: World, name: str
) -> None:
    """Public, dry-run and token allows: HTTP_X_AUTHZ_* holds exactly authz's values, no forgery
    anywhere. As shipped, Envoy drops the underscore spellings (and counts them); with that off,
    authz alone removes them (and, either way, the spellings Envoy keeps, like the dotted one)."""
    process, action = envoy
    case = CASES[name]
    upstream.clear()
    before = dropped(process)
    reply = await send(process, case, world)
    assert reply.status == 200, reply
    (seen,) = upstream.requests
    assert seen.starting("HTTP_X_AUTHZ_") == case.expected
    assert not [key for key, value in seen.environ.items() if "forged" in value]
    assert "HTTP_AUTHORIZATION" not in seen.environ  # upstream.strip_authorization
    if action == SHIPPED:
        assert dropped(process) - before == UNDERSCORED
    else:
        assert dropped(process) == before


async def test_the_request_id_is_envoys(
    envoy: tuple[EnvoyProcess, str], upstream: WsgiUpstream, world: World
) -> None:
    """A client's x-request-id is replaced at the edge: the upstream, authz (the deny body) and the
    access log all carry Envoy's, so a client cannot reuse another request's id."""
    process, _ = envoy
    upstream.clear()
    await send(process, CASES["token"], world)
    (seen,) = upstream.requests
    assert UUID.fullmatch(seen.environ["HTTP_X_REQUEST_ID"]), seen.environ
    denied = await send(process, CASES["token"]._replace(claims=None), world)  # no token: 401
    assert denied.status == 401
    request_id = denied.json()["request_id"]
    assert UUID.fullmatch(request_id)
    assert request_id != seen.environ["HTTP_X_REQUEST_ID"]
    # Envoy's access log line of that request carries the same id: the join docs/deployment/envoy.md describes.
    deadline = time.monotonic() + 10  # flushed every 50 ms here; 10 s allows for a busy machine
    while f'"request_id":"{request_id}"' not in process.logs():
        assert time.monotonic() < deadline, process.logs()
        await asyncio.sleep(0.02)
    assert CLIENT_REQUEST_ID not in process.logs()


def _checks(servers: Servers) -> float:
    return sum(servers.telemetry.checks.values.values())


def _decided(servers: Servers, reason: str) -> float:
    return sum(n for (_, _, r), n in servers.telemetry.checks.values.items() if r == reason)


# Method, host and URL overrides, and what a client claims about its address: an upstream that
# honours one runs another request than the one authz decided (attack-19 B).
OVERRIDES = {
    "HTTP_X_HTTP_METHOD_OVERRIDE": ("X-HTTP-Method-Override", "DELETE"),
    "HTTP_X_HTTP_METHOD": ("X-HTTP-Method", "DELETE"),
    "HTTP_X_METHOD_OVERRIDE": ("X-Method-Override", "DELETE"),
    "HTTP_X_FORWARDED_HOST": ("X-Forwarded-Host", "api.globex.test"),
    "HTTP_FORWARDED": ("Forwarded", "host=api.globex.test;for=6.6.6.6"),
    "HTTP_X_ORIGINAL_URL": ("X-Original-URL", "/admin/users"),
    "HTTP_X_REWRITE_URL": ("X-Rewrite-URL", "/admin/users"),
    "HTTP_X_FORWARDED_PREFIX": ("X-Forwarded-Prefix", "/admin"),
    "HTTP_X_FORWARDED_PORT": ("X-Forwarded-Port", "8443"),
    "HTTP_X_REAL_IP": ("X-Real-IP", "6.6.6.6"),
    "HTTP_TRUE_CLIENT_IP": ("True-Client-IP", "6.6.6.6"),
}


async def test_no_override_or_client_forwarding_header_reaches_the_upstream(
    envoy: tuple[EnvoyProcess, str], servers: Servers, upstream: WsgiUpstream, world: World
) -> None:
    """As shipped, the edge removes every override and the client's forwarding headers: the allow
    reaches the upstream with none of them, and x-forwarded-for is the peer alone. With the edge's
    removal off, authz refuses the method overrides itself (both doors): 400 method_override."""
    process, action = envoy
    upstream.clear()
    token = world.token(world.claims())
    headers = [("authorization", f"Bearer {token}"), *OVERRIDES.values(), ("X-Forwarded-For", "6.6.6.6")]
    reply = await asyncio.to_thread(
        http_request, process.port, "GET", "/orders", host="api.acme.test", headers=headers
    )
    if action == EDGE_OFF:
        assert (reply.status, reply.json()["reason"]) == (400, "method_override")
        assert upstream.requests == []
        return
    assert reply.status == 200, reply
    (seen,) = upstream.requests
    assert not set(OVERRIDES) & set(seen.environ), seen.environ
    # The peer alone (Envoy writes this host's own address for a loopback peer), never after the
    # client's list: an upstream reading the leftmost entry got the client's 6.6.6.6.
    assert "," not in seen.environ["HTTP_X_FORWARDED_FOR"]
    assert "6.6.6.6" not in str(seen.environ)


async def test_a_method_override_in_the_query_is_refused(
    envoy: tuple[EnvoyProcess, str], servers: Servers, upstream: WsgiUpstream, world: World
) -> None:
    """``?_method=DELETE`` (Symfony and Laravel read it from the query): the edge cannot remove it,
    authz refuses it in both doors, recorded; the upstream sees nothing."""
    process, _ = envoy
    upstream.clear()
    refused = _decided(servers, "method_override")
    reply = await asyncio.to_thread(
        http_request,
        process.port,
        "POST",
        "/orders?_method=DELETE",
        host="api.acme.test",
        headers=[("authorization", f"Bearer {world.token(world.claims())}")],
        body=b"",
    )
    assert (reply.status, reply.json()["reason"]) == (400, "method_override")
    assert upstream.requests == []
    assert _decided(servers, "method_override") == refused + 1


@pytest.mark.parametrize(
    ("host", "tenant"),
    [
        ("api.acme.test@api.globex.test", "acme"),  # the authority's host is api.globex.test
        (
            "api.globex.test:1@x.acme.test",
            "globex",
        ),  # the doors read globex and acme; URL parsers x.acme.test
        ("api.globex.test:x@api.acme.test", "globex"),
    ],
)
async def test_a_host_that_is_not_an_authority_is_refused_alike(
    envoy: tuple[EnvoyProcess, str],
    servers: Servers,
    upstream: WsgiUpstream,
    world: World,
    host: str,
    tenant: str,
) -> None:
    """Userinfo or a port that is not a number: 400 host_invalid from both doors, before any tenant
    is chosen, whatever the route's tenant or the token's (attack-19 A)."""
    process, _ = envoy
    upstream.clear()
    if tenant == "acme":
        token = world.token(world.claims())
    else:
        claims = world.claims(iss="https://idp.globex.test", tenant="globex")
        token = world.token(claims, signing_kid="globex-es256")
    reply = await asyncio.to_thread(
        http_request,
        process.port,
        "GET",
        "/orders",
        host=host,
        headers=[("authorization", f"Bearer {token}")],
    )
    assert (reply.status, reply.json()["reason"]) == (400, "host_invalid")
    assert upstream.requests == []


def _h2(port: int, method: str, path: str, token: str | None) -> tuple[int | None, bytes]:
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "api.acme.test")]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    connection = H2Connection(port)
    try:
        stream = connection.request(headers)
        return connection.response(stream, time.monotonic() + 10)  # 10 s: an answer on a busy machine
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("method", "path", "with_token"),
    [("get", "/orders", True), ("gEt", "/orders", True), ("FOO", "/healthz", False)],
)
async def test_methods_are_matched_exactly_as_sent(
    envoy: tuple[EnvoyProcess, str],
    servers: Servers,
    upstream: WsgiUpstream,
    world: World,
    method: str,
    path: str,
    with_token: bool,
) -> None:
    """Over HTTP/2 Envoy forwards any method token. ``get`` is not GET (RFC 9110 §9.1; nor to Go's
    ServeMux or Tomcat): both doors answer a method outside the standard set 400 request_malformed,
    recorded, and the upstream never sees it (attack-19 C; the HTTP door closed the connection, D)."""
    process, _ = envoy
    upstream.clear()
    refused = _decided(servers, "request_malformed")
    token = world.token(world.claims()) if with_token else None
    status, body = await asyncio.to_thread(_h2, process.port, method, path, token)
    assert status == 400
    assert json.loads(body)["reason"] == "request_malformed"
    assert upstream.requests == []
    assert _decided(servers, "request_malformed") == refused + 1


# Requests Envoy forwards as they are (each within its 60 KiB / 100 headers), with the answer both
# doors give. The HTTP door used to refuse the first four at the connection level (attack-19 D).
FORWARDED = {
    "target-of-8.2-KiB": ("GET", "/orders/" + "a" * 8200, [], (400, "path_invalid")),
    "authorization-of-20-KiB": ("GET", "/orders", [("authorization", "Bearer " + "a" * 20000)], (401, "token_too_large")),
    "authorization-near-envoys-limit": (
        "GET", "/orders", [("authorization", "Bearer " + "a" * 58000)], (401, "token_too_large"),
    ),
    "x-b3-headers-of-20-KiB": ("GET", "/orders", [(f"x-b3-pad{i}", "a" * 4000) for i in range(5)], (401, "token_missing")),
    "90-headers": ("GET", "/orders", [("x.authz.subject", "forged")] * 90, (401, "token_missing")),
}  # fmt: skip


@pytest.mark.parametrize("case", FORWARDED)
async def test_what_envoy_forwards_is_decided_on_its_connection(
    envoy: tuple[EnvoyProcess, str], servers: Servers, upstream: WsgiUpstream, case: str
) -> None:
    """Both doors decide each such request alike and record it; the HTTP door keeps Envoy's
    connection (no connection accepted for any of them: Envoy reuses its pool)."""
    process, _ = envoy
    method, path, headers, expected = FORWARDED[case]
    await asyncio.to_thread(http_request, process.port, "GET", "/healthz", host="api.acme.test")  # pool warm
    accepted = servers.telemetry.http_connections.values.get((), 0)
    checks = _checks(servers)
    for _ in range(3):
        reply = await asyncio.to_thread(
            http_request, process.port, method, path, host="api.acme.test", headers=headers
        )
        assert (reply.status, reply.json()["reason"]) == expected
    assert _checks(servers) == checks + 3
    assert servers.telemetry.http_connections.values.get((), 0) == accepted
    assert upstream.requests == [] or all(r.path == "/healthz" for r in upstream.requests)


VICTIM = "0af7651916cd43dd8448eb211c80319c"  # a trace id the client saw elsewhere
CONTEXTS = {
    "traceparent": [("traceparent", f"00-{VICTIM}-b7ad6b7169203331-01"), ("tracestate", "v=1")],
    "b3": [("b3", f"{VICTIM}-b7ad6b7169203331-1")],
    "x-b3": [("x-b3-traceid", VICTIM), ("x-b3-spanid", "b7ad6b7169203331"), ("x-b3-sampled", "1")],
}


@pytest.mark.parametrize("context", CONTEXTS)
async def test_the_trace_id_is_never_the_clients(
    envoy: tuple[EnvoyProcess, str],
    upstream: WsgiUpstream,
    world: World,
    caplog: pytest.LogCaptureFixture,
    context: str,
) -> None:
    """A client's trace context is removed at the edge: the trace id of authz's decision log (the
    join with Envoy's access log and the traces) is Envoy's own or none, on an allow and a deny,
    and the upstream never sees the client's (attack-19 E; the request-id rule of issue 19).
    With the removal off (these configurations do not trace), authz records the client's: the
    edge is the layer that decides who owns the trace id (docs/deployment/envoy.md: Traces)."""
    process, action = envoy
    caplog.set_level(logging.INFO, logger="authz.decision")
    upstream.clear()
    allow = [("authorization", f"Bearer {world.token(world.claims())}"), *CONTEXTS[context]]
    for headers, status in ((allow, 200), (CONTEXTS[context], 401)):
        reply = await asyncio.to_thread(
            http_request, process.port, "GET", "/orders", host="api.acme.test", headers=headers
        )
        assert reply.status == status
    logged = [r.fields for r in caplog.records if r.getMessage() == "decision"]  # type: ignore[attr-defined]
    assert len(logged) == 2
    (seen,) = upstream.requests
    if action == EDGE_OFF:
        assert [fields["trace_id"] for fields in logged] == [VICTIM, VICTIM]
        return
    assert [fields["trace_id"] for fields in logged if fields["trace_id"] == VICTIM] == []
    assert VICTIM not in str(seen.environ)
