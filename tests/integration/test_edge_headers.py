"""End to end through every Envoy configuration deploy/envoy/render.py ships, both doors, in front
of a WSGI upstream: no client-supplied value ever reaches what the upstream reads as ours
(``HTTP_X_AUTHZ_*``), and the request id is Envoy's, never the client's.

Each variant is rendered with its committed parameters, addresses moved to 127.0.0.1 (tests/deploy/test_deploy.py
checks the committed files are these renderings). The quick-start variants answer with a direct
response that echoes only the dashed names, so they get the WSGI upstream their Kubernetes siblings
have; everything else is as shipped. Two more runs turn Envoy's underscore setting off (``ALLOW``),
one per door: authz alone must then keep the forgeries out. One authz (gRPC door, HTTP door and
admin port, in-process, clock at NOW) serves the module; one Envoy per configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
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


SHIPPED = "as-shipped"
# (variant, Envoy's headers_with_underscores_action): as shipped, then with Envoy's own drop off.
CONFIGS = [(v, SHIPPED) for v in render.VARIANTS] + [(_first(door), "ALLOW") for door in render.DOORS]


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
            yield Servers(grpc.port, http_port, admin_port)
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
    if action != SHIPPED:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["common_http_protocol_options"]["headers_with_underscores_action"] = action
    return config


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{_variant_id(c[0])}-{c[1]}")
def envoy(
    request: pytest.FixtureRequest,
    servers: Servers,
    upstream: WsgiUpstream,
    collector: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EnvoyProcess, str]]:
    """One Envoy per configuration, and its underscore action."""
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
    # Envoy's access log line of that request carries the same id: the join the README describes.
    deadline = time.monotonic() + 10  # flushed every 50 ms here; 10 s allows for a busy machine
    while f'"request_id":"{request_id}"' not in process.logs():
        assert time.monotonic() < deadline, process.logs()
        await asyncio.sleep(0.02)
    assert CLIENT_REQUEST_ID not in process.logs()
