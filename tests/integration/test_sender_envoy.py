"""Sender-constrained tokens through the real Envoy (1.40), rendered by deploy/envoy/render.py, both doors.

One authz process (gRPC door, HTTP door, in-process, a clock the tests move) serves the module, with
DPoP server nonces required; one Envoy per door on a plaintext listener, and one per door on an mTLS
listener (gRPC door: client certificates verified against a CA; HTTP door: any certificate,
``ACCEPT_UNTRUSTED``). A client does what RFC 9449 and RFC 8705 clients do: asks, gets a nonce,
retries with a fresh proof; presents its certificate. The four questions the design note left open
about Envoy are answered here (docs/sender-constrained.md, What Envoy 1.40 does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from authz.config import SnapshotHolder, load_config
from authz.core.check import Checker
from authz.grpc.server import run_server
from authz.http.door import HttpDoor
from authz.telemetry.recorder import Telemetry
from testkit import dpop
from testkit.dpop import DPOP_ALGS
from testkit.envoy import (
    EchoUpstream,
    EnvoyProcess,
    HttpResponse,
    http_request,
    https_request,
    load_render,
    raw_request,
    run_envoy,
)
from testkit.h2wire import H2Connection
from testkit.sender import Cert, jkt, make_cert, proof, write_cert, write_config
from testkit.world import NOW, World

pytestmark = pytest.mark.envoy

render = load_render()
LIFETIME = 120  # the nonce lifetime (the default)
USE_NONCE = f'DPoP error="use_dpop_nonce", {DPOP_ALGS}'
INVALID_PROOF = f'DPoP error="invalid_dpop_proof", {DPOP_ALGS}'
BEARER_INVALID = f'Bearer error="invalid_token", DPoP {DPOP_ALGS}'


class Clock:
    """authz's clock: NOW until a test moves it (and puts it back)."""

    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class Servers(NamedTuple):
    grpc_port: int
    http_port: int
    clock: Clock
    telemetry: Telemetry


class Certs(NamedTuple):
    ca: Path  # the clients' CA (the gRPC-door mTLS listener trusts it)
    server: Path  # the listeners' certificate (also the clients' trust anchor for it)
    a: tuple[Path, Path]  # client A, CA-signed: the one the tokens are bound to
    b: tuple[Path, Path]  # client B, CA-signed: another client
    a_cert: Cert
    b_cert: Cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = make_cert("clients-ca", ca=True)
    server = make_cert("api.acme.test", dns="api.acme.test")
    a, b = make_cert("client-a", issuer=ca), make_cert("client-b", issuer=ca)
    ca_pem, _ = write_cert(ca, folder, "ca")
    server_pem, _ = write_cert(server, folder, "server")
    return Certs(ca_pem, server_pem, write_cert(a, folder, "a"), write_cert(b, folder, "b"), a, b)


@pytest.fixture(scope="module")
async def servers(world: World, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    root = tmp_path_factory.mktemp("authz")
    path = write_config(
        world,
        root,
        dpop_section="nonce: {required: true, secret: keys/nonce.jwks.json}",
        extra=f"http:\n  path_prefix: {render.HTTP_PATH_PREFIX}\n",
    )
    config = load_config(path)
    clock = Clock()
    holder = SnapshotHolder(config, clock=clock)  # one holder: one replay store for both doors
    telemetry = Telemetry()
    door = HttpDoor(holder, clock, telemetry, config.http)
    http_port = await door.start("127.0.0.1:0")
    try:
        async with run_server(holder, "127.0.0.1:0", config.server, clock=clock, telemetry=telemetry) as grpc:
            yield Servers(grpc.port, http_port, clock, telemetry)
    finally:
        await door.stop(1.0)


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as server:
        yield server


def _rendered(door: str, servers: Servers, upstream: EchoUpstream, tls: Any = None) -> dict[str, Any]:
    port = servers.grpc_port if door == "grpc" else servers.http_port
    params = render.Params(
        listen="127.0.0.1:0",
        admin="127.0.0.1:0",
        authz=f"127.0.0.1:{port}",
        upstream=f"127.0.0.1:{upstream.port}",
        door=door,
        downstream_tls=tls,
    )
    return dict(render.render(params))


@pytest.fixture(scope="module")
def envoys(
    servers: Servers, upstream: EchoUpstream, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, EnvoyProcess]]:
    """grpc, http: plaintext listeners; grpc-mtls (client CA), http-mtls (any client certificate)."""
    server_key = str(certs.server).replace(".pem", "-key.pem")
    variants = {
        "grpc": _rendered("grpc", servers, upstream),
        "http": _rendered("http", servers, upstream),
        "grpc-mtls": _rendered(
            "grpc", servers, upstream, render.DownstreamTls(str(certs.server), server_key, str(certs.ca))
        ),
        "http-mtls": _rendered(
            "http", servers, upstream, render.DownstreamTls(str(certs.server), server_key)
        ),
    }
    running: dict[str, EnvoyProcess] = {}
    managers = []
    try:
        for name, config in variants.items():
            manager = run_envoy(config, tmp_path=tmp_path_factory.mktemp(f"envoy-{name}"))
            running[name] = manager.__enter__()
            managers.append(manager)
        yield running
    finally:
        for manager in reversed(managers):
            manager.__exit__(None, None, None)


@pytest.fixture(scope="module")
def key() -> Any:
    return dpop.new_key("ES256")


@pytest.fixture(scope="module")
def token(world: World, key: Any) -> str:
    return world.token(world.claims(cnf={"jkt": jkt(key)}))


URL = "http://api.acme.test/orders"  # as Envoy sees it: plaintext, Host api.acme.test (port stripped)


async def send(envoy: EnvoyProcess, headers: list[tuple[str, str]], method: str = "GET") -> HttpResponse:
    return await asyncio.to_thread(
        http_request, envoy.port, method, "/orders", host="api.acme.test", headers=headers
    )


async def nonce_of(envoy: EnvoyProcess, key: Any, token: str) -> str:
    """What a client does first: a proof without a nonce, and the server's answer."""
    reply = await send(envoy, [("authorization", f"DPoP {token}"), ("dpop", proof(key, token, url=URL))])
    assert reply.status == 401, reply
    assert reply.headers["www-authenticate"] == [USE_NONCE]  # one field, DPoP's alone
    assert reply.json()["error"] == "use_dpop_nonce"
    (nonce,) = reply.headers["dpop-nonce"]
    return nonce


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_dpop_client_gets_a_nonce_then_is_allowed_and_a_replay_is_denied(
    envoys: dict[str, EnvoyProcess], upstream: EchoUpstream, servers: Servers, key: Any, token: str, door: str
) -> None:
    envoy = envoys[door]
    nonce = await nonce_of(envoy, key, token)
    upstream.clear()
    headers = [("authorization", f"DPoP {token}"), ("dpop", proof(key, token, url=URL, nonce=nonce))]
    allowed = await send(envoy, headers)
    assert allowed.status == 200, allowed
    (seen,) = upstream.requests
    assert seen.header("x-authz-subject") == "user-1"
    assert seen.header("authorization") is None  # strip_authorization, and the proof goes with it
    assert seen.header("dpop") is None
    assert allowed.header("dpop-nonce") is None  # the client's nonce is current
    replayed = await send(envoy, headers)
    assert (replayed.status, replayed.json()["reason"]) == (401, "dpop_proof_replayed")
    assert replayed.headers["www-authenticate"] == [INVALID_PROOF]
    assert replayed.headers["dpop-nonce"] == [nonce]  # every DPoP 401 carries the current nonce
    fresh = await send(
        envoy, [("authorization", f"DPoP {token}"), ("dpop", proof(key, token, url=URL, nonce=nonce))]
    )
    assert fresh.status == 200, fresh


async def test_a_proof_spent_through_one_door_is_a_replay_through_the_other(
    envoys: dict[str, EnvoyProcess], key: Any, token: str
) -> None:
    nonce = await nonce_of(envoys["grpc"], key, token)
    headers = [("authorization", f"DPoP {token}"), ("dpop", proof(key, token, url=URL, nonce=nonce))]
    assert (await send(envoys["grpc"], headers)).status == 200
    replayed = await send(envoys["http"], headers)
    assert (replayed.status, replayed.json()["reason"]) == (401, "dpop_proof_replayed")


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_an_allow_brings_the_next_nonce_when_the_clients_is_in_its_last_window(
    envoys: dict[str, EnvoyProcess], servers: Servers, key: Any, token: str, door: str
) -> None:
    """RFC 9449 8.2: a new nonce on a 200, uncacheable (gRPC: OkHttpResponse.response_headers_to_add;
    HTTP door: Envoy's allowed_client_headers_on_success)."""
    envoy = envoys[door]
    nonce = await nonce_of(envoy, key, token)
    servers.clock.now = NOW + LIFETIME
    try:
        value = proof(key, token, url=URL, nonce=nonce, iat=servers.clock.now)
        reply = await send(envoy, [("authorization", f"DPoP {token}"), ("dpop", value)])
        assert reply.status == 200, reply
        (fresh,) = reply.headers["dpop-nonce"]
        assert fresh != nonce
        assert reply.headers["cache-control"] == ["no-store"]
    finally:
        servers.clock.now = float(NOW)


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_client_cannot_choose_the_scheme_a_proof_is_checked_against(
    envoys: dict[str, EnvoyProcess], key: Any, token: str, door: str
) -> None:
    """A proof for https:// over a plaintext connection, with the client's own x-forwarded-proto:
    Envoy (the edge) sets the header from the connection, so the proof names another URL."""
    nonce = await nonce_of(envoys[door], key, token)
    https = proof(key, token, url="https://api.acme.test/orders", nonce=nonce)
    headers = [("authorization", f"DPoP {token}"), ("dpop", https), ("x-forwarded-proto", "https")]
    reply = await send(envoys[door], headers)
    assert (reply.status, reply.json()["reason"]) == (401, "dpop_proof_invalid")


def _h2(port: int, headers: list[tuple[str, str]]) -> tuple[int | None, bytes]:
    connection = H2Connection(port)
    try:
        stream = connection.request(headers)
        return connection.response(stream, time.monotonic() + 10)  # 10 s: bounds a busy machine
    finally:
        connection.close()


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_client_cannot_choose_the_scheme_by_its_h2_scheme_pseudo_header(
    envoys: dict[str, EnvoyProcess], key: Any, token: str, door: str
) -> None:
    """Security review of issue 14, finding A: over HTTP/2 a client sends its own :scheme, which
    Envoy kept and passed to the gRPC door as the request's scheme; the rendered listener now
    overwrites it with its own (scheme_header_transformation), so both doors see http here."""
    nonce = await nonce_of(envoys[door], key, token)

    def ask(scheme: str) -> tuple[int | None, bytes]:
        value = proof(key, token, url=f"{scheme}://api.acme.test/orders", nonce=nonce)
        headers = [(":method", "GET"), (":scheme", scheme), (":path", "/orders"),
                   (":authority", "api.acme.test"), ("authorization", f"DPoP {token}"), ("dpop", value)]  # fmt: skip
        return _h2(envoys[door].port, headers)

    status, body = await asyncio.to_thread(ask, "https")
    # (401 is not in HPACK's static table: h2wire reads it as None; the body says which deny)
    assert (status, json.loads(body)["reason"]) == (None, "dpop_proof_invalid")
    status, _ = await asyncio.to_thread(ask, "http")  # the honest client on this listener
    assert status == 200


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_dpop_bound_token_is_no_bearer_token_through_envoy(
    envoys: dict[str, EnvoyProcess], key: Any, token: str, door: str
) -> None:
    reply = await send(
        envoys[door], [("authorization", f"Bearer {token}"), ("dpop", proof(key, token, url=URL))]
    )
    assert (reply.status, reply.json()["reason"]) == (401, "dpop_proof_missing")
    assert reply.headers["www-authenticate"] == [BEARER_INVALID]  # both challenges, one field
    assert "dpop-nonce" not in reply.headers


# -- certificate-bound tokens over a real mTLS connection ------------------------------------------


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_certificate_bound_token_over_mtls(
    envoys: dict[str, EnvoyProcess], upstream: EchoUpstream, world: World, certs: Certs, door: str
) -> None:
    """Allowed with the certificate the token names; denied with another; a forged XFCC naming the
    right certificate changes nothing (Envoy replaces it: SANITIZE_SET)."""
    envoy = envoys[f"{door}-mtls"]
    bound = world.token(world.claims(cnf={"x5t#S256": certs.a_cert.x5t}))

    async def over_tls(client: tuple[Path, Path], *extra: tuple[str, str]) -> HttpResponse:
        return await asyncio.to_thread(
            https_request, envoy.port, "GET", "/orders", host="api.acme.test", ca=certs.server, client=client,
            headers=[("authorization", f"Bearer {bound}"), *extra],
        )  # fmt: skip

    upstream.clear()
    allowed = await over_tls(certs.a)
    assert allowed.status == 200, allowed
    assert upstream.requests[0].header("x-authz-subject") == "user-1"
    other = await over_tls(certs.b)
    assert (other.status, other.json()["reason"]) == (401, "client_certificate_mismatch")
    assert other.headers["www-authenticate"] == [BEARER_INVALID]
    forged = await over_tls(certs.b, ("x-forwarded-client-cert", certs.a_cert.xfcc))
    assert (forged.status, forged.json()["reason"]) == (401, "client_certificate_mismatch")


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_a_client_certificate_header_over_plaintext_is_no_certificate(
    envoys: dict[str, EnvoyProcess], world: World, certs: Certs, door: str
) -> None:
    """A client's own x-forwarded-client-cert never reaches authz as a certificate (Envoy removes it:
    SANITIZE; and the gRPC door reads the peer certificate, never the header)."""
    bound = world.token(world.claims(cnf={"x5t#S256": certs.a_cert.x5t}))
    headers = [("authorization", f"Bearer {bound}"), ("x-forwarded-client-cert", certs.a_cert.xfcc)]
    reply = await send(envoys[door], headers)
    assert (reply.status, reply.json()["reason"]) == (401, "client_certificate_missing")


async def test_open_question_3_accept_untrusted_lets_a_connection_without_a_certificate_in(
    envoys: dict[str, EnvoyProcess], world: World, certs: Certs
) -> None:
    """With a client CA (grpc-mtls) a client without a certificate is refused in the handshake. With
    ACCEPT_UNTRUSTED (http-mtls) Envoy 1.40 lets it in although require_client_certificate is true:
    the listener does not enforce certificates; authz still refuses a certificate-bound token
    without one (client_certificate_missing), and bearer tokens pass as on any listener."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(
            https_request, envoys["grpc-mtls"].port, "GET", "/orders", host="api.acme.test", ca=certs.server
        )
    bound = world.token(world.claims(cnf={"x5t#S256": certs.a_cert.x5t}))
    reply = await asyncio.to_thread(
        https_request, envoys["http-mtls"].port, "GET", "/orders", host="api.acme.test", ca=certs.server,
        headers=[("authorization", f"Bearer {bound}")],
    )  # fmt: skip
    assert (reply.status, reply.json()["reason"]) == (401, "client_certificate_missing")
    plain = world.token()
    reply = await asyncio.to_thread(
        https_request, envoys["http-mtls"].port, "GET", "/orders", host="api.acme.test", ca=certs.server,
        headers=[("authorization", f"Bearer {plain}")],
    )  # fmt: skip
    assert reply.status == 200


# -- what Envoy 1.40 sends: the design note's open questions ----------------------------------------


@pytest.mark.parametrize("door", ["grpc", "http"])
async def test_open_question_1_two_dpop_lines_reach_authz_as_two_values(
    envoys: dict[str, EnvoyProcess], key: Any, token: str, door: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC door (encode_raw_headers): two header_map entries. HTTP door (http_service): Envoy joins
    the lines with a comma into one value. authz refuses both forms as more than one proof."""
    seen: list[tuple[str, ...]] = []
    decide = Checker.decide

    def spy(self: Checker, snapshot: Any, request: Any, *args: Any) -> Any:
        seen.append(request.dpop)
        return decide(self, snapshot, request, *args)

    monkeypatch.setattr(Checker, "decide", spy)
    one, two = proof(key, token, url=URL), proof(key, token, url=URL)
    data = (
        f"GET /orders HTTP/1.1\r\nHost: api.acme.test\r\nAuthorization: DPoP {token}\r\n"
        f"DPoP: {one}\r\nDPoP: {two}\r\nConnection: close\r\n\r\n"
    ).encode()
    reply = await asyncio.to_thread(raw_request, envoys[door].port, data)
    assert (reply.status, reply.json()["reason"]) == (401, "dpop_proof_invalid")
    assert seen == ([(one, two)] if door == "grpc" else [(f"{one},{two}",)])


async def test_open_question_2_the_peer_fingerprint_formatter_without_a_certificate(
    servers: Servers, upstream: EchoUpstream, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """%DOWNSTREAM_PEER_FINGERPRINT_256% in the HTTP door's headers_to_add: the hex SHA-256 with a
    client certificate; without one (plaintext) the header is sent empty."""
    seen: list[tuple[str, ...]] = []
    decide = Checker.decide

    def spy(self: Checker, snapshot: Any, request: Any, *args: Any) -> Any:
        seen.append(request.headers.get("x-peer-fingerprint", ("<absent>",)))
        return decide(self, snapshot, request, *args)

    monkeypatch.setattr(Checker, "decide", spy)
    server_key = str(certs.server).replace(".pem", "-key.pem")
    for tls in (None, render.DownstreamTls(str(certs.server), server_key)):
        config = _rendered("http", servers, upstream, tls)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        service = hcm["http_filters"][0]["typed_config"]["http_service"]
        service["authorization_request"] = {
            "headers_to_add": [{"key": "x-peer-fingerprint", "value": "%DOWNSTREAM_PEER_FINGERPRINT_256%"}]
        }
        with run_envoy(config, tmp_path=tmp_path / ("tls" if tls else "plain")) as envoy:
            if tls is None:
                await asyncio.to_thread(http_request, envoy.port, "GET", "/orders", host="api.acme.test")
            else:
                await asyncio.to_thread(
                    https_request,
                    envoy.port,
                    "GET",
                    "/orders",
                    host="api.acme.test",
                    ca=certs.server,
                    client=certs.a,
                )
    assert seen == [("<absent>",), (certs.a_cert.fingerprint.hex(),)]


async def test_open_question_4_a_lower_case_method(
    envoys: dict[str, EnvoyProcess], servers: Servers, key: Any, token: str
) -> None:
    """Over HTTP/1.1 Envoy's codec refuses ``get`` itself (400, authz never asked); over HTTP/2 it
    reaches both doors exactly as sent and is refused there (request_malformed), so a proof's htm
    is always compared with the method the upstream will see."""
    from tests.integration.test_edge_headers import _h2

    for door in ("grpc", "http"):
        before = sum(servers.telemetry.checks.values.values())
        data = b"get /orders HTTP/1.1\r\nHost: api.acme.test\r\nConnection: close\r\n\r\n"
        reply = await asyncio.to_thread(raw_request, envoys[door].port, data)
        assert (reply.status, reply.body) == (400, b"Bad Request"), door
        assert sum(servers.telemetry.checks.values.values()) == before
        status, body = await asyncio.to_thread(_h2, envoys[door].port, "get", "/orders", None)
        assert (status, json.loads(body)["reason"]) == (400, "request_malformed"), door


def test_the_mtls_variant_pins_xfcc_and_the_plain_one_sanitizes() -> None:
    """What the tests above rely on, as render.py writes it for every variant."""
    for tls in (None, render.DownstreamTls("s.pem", "k.pem")):
        for door in render.DOORS:
            params = dataclasses.replace(render.VARIANTS[0].params, door=door, downstream_tls=tls)
            config = render.render(params)
            listener = config["static_resources"]["listeners"][0]
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            assert hcm["forward_client_cert_details"] == ("SANITIZE" if tls is None else "SANITIZE_SET")
            if tls is not None:
                context = listener["filter_chains"][0]["transport_socket"]["typed_config"]
                assert context["require_client_certificate"] is True
