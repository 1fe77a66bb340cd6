"""End to end: the gRPC door's answer memo behind a real Envoy, read from the wire.

One Envoy and one authz server (in-process, clock at NOW, its own Telemetry to count memo hits)
per module. A token's allow is primed, then each variant of that request is sent through Envoy:
what must be decided afresh is never answered from the memo, and whatever is answered, from the
memo or not, gives the upstream our identity values only. Where the C extension is built, a
repeat is answered without protobuf's parse (authz/grpc/wire.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from authz.config import Config, SnapshotHolder
from authz.grpc import servicer as grpc_servicer
from authz.grpc.server import RunningServer, run_server
from authz.grpc.wire import read_wire
from authz.telemetry.recorder import Telemetry
from testkit.envoy import EchoUpstream, EnvoyProcess
from testkit.world import NOW, World
from tests.integration import test_envoy
from tests.integration.test_envoy import send

pytestmark = pytest.mark.envoy

# test_envoy's Envoy and upstream, started for this module around its own `authz` below.
envoy, upstream = test_envoy.envoy, test_envoy.upstream


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture(scope="module")
async def authz(config: Config, telemetry: Telemetry) -> AsyncIterator[RunningServer]:
    """test_envoy's server, with a Telemetry this module reads (its envoy and upstream fixtures ask for it)."""
    holder = SnapshotHolder(config)
    async with run_server(
        holder, "127.0.0.1:0", config.server, clock=lambda: NOW, telemetry=telemetry
    ) as running:
        yield running


@pytest.fixture(scope="module")
def token(world: World) -> str:
    return world.token()


def _hits(telemetry: Telemetry) -> int:
    return int(telemetry.grpc_memo_hits.values.get((), 0))


async def _primed(envoy: EnvoyProcess, upstream: EchoUpstream, token: str, telemetry: Telemetry) -> int:
    """The plain request allowed and repeated from the memo: the hit count after it."""
    for _ in range(2):
        upstream.clear()
        assert (await send(envoy, token=token)).status == 200
    hits = _hits(telemetry)
    upstream.clear()
    assert (await send(envoy, token=token)).status == 200
    assert _hits(telemetry) == hits + 1
    upstream.clear()
    return hits + 1


async def test_a_repeat_through_envoy_is_answered_without_a_parse(
    envoy: EnvoyProcess,
    upstream: EchoUpstream,
    token: str,
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Envoy's CheckRequest, with its own request id each time, is read from the wire."""
    if read_wire is None:
        pytest.skip("the C extension authz.grpc._wire is not built here")
    await _primed(envoy, upstream, token, telemetry)
    parses: list[bytes] = []
    parse = grpc_servicer.parse

    def counted(data: bytes) -> object:
        parses.append(data)
        return parse(data)

    monkeypatch.setattr(grpc_servicer, "parse", counted)
    hits = _hits(telemetry)
    for _ in range(3):
        response = await send(envoy, token=token)
        assert response.status == 200
    assert _hits(telemetry) == hits + 3
    assert parses == []
    seen = upstream.requests[-1]
    assert seen.headers["x-authz-subject"] == ["user-1"]


# (name, extra headers, method, path): each must be decided afresh, never from the memo.
AFRESH = [
    ("another spelling of an identity header", [("x.authz-subject", "admin")], "GET", "/orders"),
    ("an underscore spelling", [("x_authz_subject", "admin")], "GET", "/orders"),
    ("x-http-method-override", [("x-http-method-override", "DELETE")], "GET", "/orders"),
    ("x-http-method", [("X-HTTP-Method", "DELETE")], "GET", "/orders"),
    ("x-method-override", [("x-method-override", "DELETE")], "GET", "/orders"),
    ("a dpop header", [("dpop", "junk")], "GET", "/orders"),
    ("a second authorization", [("authorization", "Bearer other")], "GET", "/orders"),
    ("another method", [], "POST", "/orders"),
    ("another path", [], "GET", "/admin/users"),
    ("a dot-segment path", [], "GET", "/orders/../admin/users"),
    ("a method override in the query", [], "GET", "/orders?_method=DELETE"),
]


@pytest.mark.parametrize(("name", "headers", "method", "path"), AFRESH, ids=[case[0] for case in AFRESH])
async def test_what_must_be_decided_afresh_never_comes_from_the_memo(
    envoy: EnvoyProcess,
    upstream: EchoUpstream,
    token: str,
    telemetry: Telemetry,
    name: str,
    headers: list[tuple[str, str]],
    method: str,
    path: str,
) -> None:
    hits = await _primed(envoy, upstream, token, telemetry)
    response = await send(envoy, path, method=method, token=token, headers=headers)
    assert _hits(telemetry) == hits, name
    if response.status == 200:  # allowed afresh: our values only, the other spellings removed
        (seen,) = upstream.requests
        assert seen.headers["x-authz-subject"] == ["user-1"], name
        assert not any(key.startswith(("x.authz", "x_authz")) for key in seen.headers), name
        assert "x-http-method-override" not in seen.headers, name
    else:
        assert upstream.requests == [], name


async def test_forged_identity_headers_on_a_repeat_reach_the_upstream_as_ours(
    envoy: EnvoyProcess, upstream: EchoUpstream, token: str, telemetry: Telemetry
) -> None:
    """Our own spellings, in any case, are in no key: the kept answer overwrites them."""
    hits = await _primed(envoy, upstream, token, telemetry)
    forged = [("x-authz-subject", "admin"), ("X-Authz-Tenant", "globex"), ("x-authz-scopes", "admin:all")]
    response = await send(envoy, token=token, headers=forged)
    assert response.status == 200
    assert _hits(telemetry) == hits + 1  # a repeat: the decision reads none of them
    (seen,) = upstream.requests
    assert seen.headers["x-authz-subject"] == ["user-1"]
    assert seen.headers["x-authz-tenant"] == ["acme"]
    assert seen.headers["x-authz-scopes"] == ["orders:read"]
