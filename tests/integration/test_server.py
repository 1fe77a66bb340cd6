"""The real gRPC server, driven by a client built on xds-protos' Envoy classes (not ours).

Most tests run the server in-process (``run_server`` on 127.0.0.1 port 0, clock
injected at NOW); a few run ``python -m authz serve`` as a subprocess with tokens
minted for the real clock, to see start-up, signals and logs as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2 as x_base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as x_auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as x_auth_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz.config import Config, SnapshotHolder
from authz.grpc.server import RunningServer, run_server
from testkit.dpop import INVALID_TOKEN_CHALLENGE, NO_TOKEN_CHALLENGE
from testkit.processes import ServeProcess
from testkit.world import CONFIG, NOW, World

AUTHORIZATION = "envoy.service.auth.v3.Authorization"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
OVERWRITE = x_base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
IDENTITY = ("x-authz-tenant", "x-authz-subject", "x-authz-scopes")
RPC_TIMEOUT = 10.0
START_TIMEOUT = 30.0
GRACE_SECONDS = 3

Headers = Iterable[tuple[str, str | bytes]]


def x_request(
    *,
    method: str = "GET",
    path: str = "/orders",
    host: str = "api.acme.test",
    token: str | None = None,
    headers: Headers = (),
    tenant: str | None = None,
    request_id: str = "req-1",
    raw: bool = True,
) -> x_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy sends it: header_map with raw bytes (raw) or the plain map."""
    message = x_auth_pb2.CheckRequest()
    http = message.attributes.request.http
    http.id = "7"
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    pairs: list[tuple[str, str | bytes]] = [
        (":authority", host),
        (":path", path),
        (":method", method),
        ("x-request-id", request_id),
    ]
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    pairs.extend(headers)
    for name, value in pairs:
        if raw:
            entry = http.header_map.headers.add()
            entry.key = name
            entry.raw_value = value if isinstance(value, bytes) else value.encode()
        else:
            assert isinstance(value, str)
            http.headers[name] = value
    if tenant is not None:
        message.attributes.context_extensions["tenant"] = tenant
    return message


def ok_headers(response: x_auth_pb2.CheckResponse) -> dict[str, str]:
    """Upstream headers of an allow, after asserting each overwrites a client's copy."""
    assert all(h.append_action == OVERWRITE for h in response.ok_response.headers)
    return {h.header.key: h.header.value for h in response.ok_response.headers}


def denied(response: x_auth_pb2.CheckResponse) -> tuple[int, int, dict[str, str], dict[str, Any]]:
    """(gRPC code, HTTP status, headers, JSON body) of a deny."""
    assert response.HasField("denied_response"), response
    deny = response.denied_response
    headers = {h.header.key: h.header.value for h in deny.headers}
    return response.status.code, deny.status.code, headers, json.loads(deny.body)


def metadata(response: x_auth_pb2.CheckResponse) -> dict[str, str]:
    return {k: v.string_value for k, v in response.dynamic_metadata.fields.items()}


# ------------------------------------------------------------------ in-process server


@pytest.fixture(scope="module")
async def server(config: Config) -> AsyncIterator[RunningServer]:
    """The real server in this process, on a free port, with the clock at NOW."""
    async with run_server(SnapshotHolder(config), "127.0.0.1:0", config.server, clock=lambda: NOW) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> x_auth_grpc.AuthorizationStub:
    return x_auth_grpc.AuthorizationStub(channel)


async def check(stub: x_auth_grpc.AuthorizationStub, message: x_auth_pb2.CheckRequest) -> Any:
    response = await stub.Check(message, timeout=RPC_TIMEOUT)
    assert isinstance(response, x_auth_pb2.CheckResponse)
    return response


@pytest.mark.parametrize("raw", [True, False], ids=["header_map", "headers"])
async def test_allow_sets_identity_strips_authorization_and_metadata(stub, world: World, raw: bool) -> None:
    """A valid token: OK, identity headers overwritten, authorization removed, metadata set."""
    response = await check(stub, x_request(token=world.token(), raw=raw))
    assert response.status.code == 0
    assert response.HasField("ok_response")
    assert ok_headers(response) == {
        "x-authz-tenant": "acme",
        "x-authz-subject": "user-1",
        "x-authz-scopes": "orders:read",
    }
    assert "authorization" in response.ok_response.headers_to_remove
    assert metadata(response) == {
        "decision": "allow",
        "reason": "ok",
        "tenant": "acme",
        "rule": "read-orders",
        "subject": "user-1",
    }


async def test_public_rule_removes_client_identity_headers(stub) -> None:
    """A public path without a token: allowed, forged subject/scopes removed, tenant set."""
    forged = [("x-authz-subject", "admin"), ("x-authz-scopes", "admin:all")]
    response = await check(stub, x_request(path="/healthz", headers=forged))
    assert response.status.code == 0
    assert ok_headers(response) == {"x-authz-tenant": "acme"}
    removed = set(response.ok_response.headers_to_remove)
    assert {"x-authz-subject", "x-authz-scopes", "authorization"} <= removed


async def test_missing_token_is_401_with_bare_bearer_challenge(stub) -> None:
    """No token: UNAUTHENTICATED, 401, `www-authenticate: Bearer`, JSON body with request id."""
    code, status, headers, body = denied(await check(stub, x_request(request_id="rid-missing")))
    assert (code, status) == (16, 401)
    assert headers["www-authenticate"] == NO_TOKEN_CHALLENGE
    assert headers["content-type"] == "application/json"
    assert body == {"error": "unauthorized", "reason": "token_missing", "request_id": "rid-missing"}


@pytest.mark.parametrize(
    "token",
    ["not-a-token", "a.b.c.d.e", "eyJhbGciOiJub25lIn0.e30."],
    ids=["word", "five-parts", "unsigned-jws"],
)
async def test_invalid_token_is_401_invalid_token(stub, token: str) -> None:
    """An unusable token: 401 with error="invalid_token", and no token text in the answer."""
    response = await check(stub, x_request(token=token))
    code, status, headers, body = denied(response)
    assert (code, status) == (16, 401)
    assert headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE
    assert body["error"] == "invalid_token"
    assert token not in response.SerializeToString().decode("utf-8", "replace")


async def test_expired_token_is_401(stub, world: World) -> None:
    """A token expired at the injected clock is refused (the clock really is the injected one)."""
    claims = world.claims(iat=NOW - 1000, nbf=NOW - 1000, exp=NOW - 500)
    code, status, _, body = denied(await check(stub, x_request(token=world.token(claims))))
    assert (code, status, body["reason"]) == (16, 401, "token_expired")


@pytest.mark.parametrize(
    ("path", "claims", "reason"),
    [
        ("/orders", {"scope": "profile"}, "scope_missing"),
        ("/admin/users", {}, "role_missing"),
    ],
)
async def test_forbidden_is_403(stub, world: World, path: str, claims: dict[str, Any], reason: str) -> None:
    """A valid token without the rule's scope or role: PERMISSION_DENIED, 403."""
    response = await check(stub, x_request(path=path, token=world.token(world.claims(**claims))))
    code, status, headers, body = denied(response)
    assert (code, status, body["reason"]) == (7, 403, reason)
    if reason == "scope_missing":
        assert headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="orders:read"'
    assert metadata(response)["decision"] == "deny"


@pytest.mark.parametrize("path", ["/orders%2Fadmin", "/../admin", "orders", "/orders/%zz", "/a\x01b"])
async def test_path_invalid_is_400_with_request_id(stub, world: World, path: str) -> None:
    """An unsafe path: INVALID_ARGUMENT, 400, and the request id still in the body."""
    response = await check(stub, x_request(path=path, token=world.token(), request_id="rid-path"))
    code, status, _, body = denied(response)
    assert (code, status) == (3, 400)
    assert body == {"error": "invalid_request", "reason": "path_invalid", "request_id": "rid-path"}


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\x00\x01garbage", b"Bearer \xff\xfe\xfd", b"Bearer " + bytes(range(256)), b"Bearer  a b c"],
    ids=["binary", "bearer-binary", "every-byte", "several-words"],
)
async def test_garbage_authorization_bytes_are_denied(stub, value: bytes) -> None:
    """Arbitrary bytes in authorization: a 401 CheckResponse, never an RPC error."""
    response = await check(stub, x_request(headers=[("authorization", value)]))
    code, status, _, _ = denied(response)
    assert (code, status) == (16, 401)


async def test_duplicate_authorization_headers_are_denied(stub, world: World) -> None:
    """Two authorization headers (one valid): 401 authorization_malformed."""
    message = x_request(token=world.token(), headers=[("authorization", "Bearer other")])
    _, status, _, body = denied(await check(stub, message))
    assert (status, body["reason"]) == (401, "authorization_malformed")


async def test_huge_headers_are_answered(stub, world: World) -> None:
    """A 512 KiB ordinary header is fine; a 512 KiB bearer token is a 401 token_too_large."""
    big = "x" * (512 * 1024)
    response = await check(stub, x_request(token=world.token(), headers=[("x-big", big)]))
    assert response.status.code == 0
    _, status, _, body = denied(await check(stub, x_request(token=big)))
    assert (status, body["reason"]) == (401, "token_too_large")


async def test_empty_check_request_is_answered(stub) -> None:
    """A CheckRequest with nothing set is a 400 deny, not an RPC error."""
    code, status, _, body = denied(await check(stub, x_auth_pb2.CheckRequest()))
    assert (code, status, body["reason"]) == (3, 400, "request_malformed")  # no method (checked first)


async def test_unknown_tenant_is_403(stub, world: World) -> None:
    """A host no tenant serves, with a token naming no tenant: 403 tenant_unknown."""
    token = world.token(world.claims(tenant=None))
    _, status, _, body = denied(await check(stub, x_request(host="unknown.test", token=token)))
    assert (status, body["reason"]) == (403, "tenant_unknown")


async def test_concurrent_checks_all_answered(stub, world: World) -> None:
    """Many checks at once each get their own, correct answer."""
    token = world.token()
    messages = [x_request(token=token if i % 2 else None, request_id=f"c-{i}") for i in range(40)]
    responses = await asyncio.gather(*(check(stub, m) for m in messages))
    for i, response in enumerate(responses):
        if i % 2:
            assert response.status.code == 0
        else:
            assert denied(response)[3]["request_id"] == f"c-{i}"


async def test_message_over_limit_is_resource_exhausted(stub, config: Config) -> None:
    """A request above max_message_bytes is refused by the transport with RESOURCE_EXHAUSTED."""
    message = x_request(headers=[("x-pad", "p" * (config.server.max_message_bytes + 1024))])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(message, timeout=RPC_TIMEOUT)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("service", ["", AUTHORIZATION])
async def test_health_serving(channel, service: str) -> None:
    """grpc.health.v1 reports SERVING for the server and for the Authorization service."""
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_unknown_service_not_found(channel) -> None:
    """An unknown service name is NOT_FOUND, as the health protocol says."""
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=RPC_TIMEOUT)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_resolves_services(channel) -> None:
    """Reflection lists Authorization, Health and itself, and resolves each one's file."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        *(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
            for name in (AUTHORIZATION, HEALTH, REFLECTION)
        ),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT)]
    listed = {s.name for s in responses[0].list_services_response.service}
    assert {AUTHORIZATION, HEALTH, REFLECTION} <= listed
    for response in responses[1:]:
        assert response.HasField("file_descriptor_response"), response.error_response


# ------------------------------------------------------------------ subprocess server


@dataclass
class Served:
    """A `python -m authz serve` subprocess and everything it wrote to stderr."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    port: int = 0

    def stderr(self) -> str:
        return "".join(self.lines)


def _authz(*args: str) -> list[str]:
    return [sys.executable, "-m", "authz", *args]


def _serve_config(world: World, folder: Path) -> Path:
    """The world's config with absolute key paths and a short grace period."""
    text = CONFIG.replace("keys/", f"{world.root}/keys/")
    text += f"server:\n  grace_seconds: {GRACE_SECONDS}\n  max_message_bytes: 65536\n"
    path = folder / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _wait_serving(port: int, process: subprocess.Popen[str], deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        health = health_pb2_grpc.HealthStub(chan)
        while True:
            assert process.poll() is None, "server exited during start-up"
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=AUTHORIZATION), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "server not SERVING in time"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def served(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`authz serve` on 127.0.0.1 port 0 (port read from its log), waited on until SERVING."""
    config_path = _serve_config(world, tmp_path_factory.mktemp("serve"))
    running = ServeProcess.start(
        config_path, ["--listen", "127.0.0.1:0"], env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        port, _ = running.ports()
        served = Served(running.process, running.raw, port)
        _wait_serving(served.port, running.process, deadline)
        yield served
    finally:
        running.stop()


def _real_clock_token(world: World, **claims: Any) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now, nbf=now, exp=now + 300, **claims))


def test_subprocess_answers_checks(served: Served, world: World) -> None:
    """`authz serve` allows a real-clock token, denies others, and enforces its message limit."""
    token = _real_clock_token(world)
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as chan:
        stub = x_auth_grpc.AuthorizationStub(chan)
        allowed = stub.Check(x_request(token=token), timeout=RPC_TIMEOUT)
        assert allowed.status.code == 0
        assert ok_headers(allowed)["x-authz-subject"] == "user-1"
        forbidden = stub.Check(x_request(path="/admin/x", token=token), timeout=RPC_TIMEOUT)
        assert denied(forbidden)[:2] == (7, 403)
        # A NOW token is not yet valid for a server on the real clock.
        future = stub.Check(x_request(token=world.token()), timeout=RPC_TIMEOUT)
        assert denied(future)[3]["reason"] in {"token_not_yet_valid", "iat_in_future"}
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(x_request(headers=[("x-pad", "p" * 70_000)]), timeout=RPC_TIMEOUT)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.process.poll() is None


def test_subprocess_drains_on_sigterm_and_logs_no_token(served: Served, world: World) -> None:
    """SIGTERM: exit 0 within the grace period; stderr is JSON lines without any token text."""
    token = _real_clock_token(world, scope="profile")
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as chan:
        stub = x_auth_grpc.AuthorizationStub(chan)
        for path in ("/orders", "/orders%2F..", "/admin"):
            stub.Check(x_request(path=path, token=token), timeout=RPC_TIMEOUT)
        stub.Check(x_request(headers=[("authorization", f"Basic {token}")]), timeout=RPC_TIMEOUT)
    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=GRACE_SECONDS + 5) == 0
    assert time.monotonic() - started < GRACE_SECONDS + 5
    deadline = time.monotonic() + 5
    while not any('"msg":"stopped"' in line for line in served.lines) and time.monotonic() < deadline:
        time.sleep(0.02)  # the reader thread may still be catching up with the pipe
    records = [json.loads(line) for line in served.lines]
    messages = [r["msg"] for r in records]
    assert messages[:2] == ["listening", "serving"]
    assert messages[-2:] == ["draining", "stopped"]
    decisions = [r for r in records if r["msg"] == "decision"]
    assert [d["reason"] for d in decisions[-4:]] == [
        "scope_missing",
        "path_invalid",
        "role_missing",
        "token_missing",
    ]
    text = served.stderr()
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in text


def test_missing_config_exits_nonzero_with_reason(tmp_path: Path) -> None:
    """A config file that does not exist: non-zero exit, the file and reason on stderr."""
    missing = tmp_path / "nope.yaml"
    result = subprocess.run(
        _authz("serve", "--config", str(missing), "--listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "cannot read config file" in result.stderr


def test_invalid_config_exits_nonzero_with_file_and_line(world: World, tmp_path: Path) -> None:
    """An invalid config: non-zero exit, `file:line: reason` on stderr, no traceback."""
    text = CONFIG.replace("keys/", f"{world.root}/keys/")
    lines = text.splitlines()
    bad_line = lines.index("    mode: enforce") + 1
    lines[bad_line - 1] = "    mode: sometimes"
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        _authz("serve", "--config", str(path), "--listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert re.search(rf"{re.escape(str(path))}:{bad_line}\b", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_nonzero_without_traceback(world: World, tmp_path: Path) -> None:
    """A listen address already taken: exit 1 with a 'cannot serve' log line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _authz("serve", "--config", str(_serve_config(world, tmp_path)), "--listen", f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(record["msg"] == "cannot serve" for record in logged)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xff\xff\xff", id="not-protobuf"),
        # attributes(1).request(4).http(2).method(2) = invalid UTF-8 in a proto3 string field
        pytest.param(b"\x0a\x08\x22\x06\x12\x04\x12\x02\xc3\x28", id="invalid-utf8-string"),
    ],
)
async def test_undecodable_check_request_is_a_deny_not_an_rpc_error(channel, data: bytes) -> None:
    """Bytes that are not a CheckRequest get a 400 request_malformed deny, not a gRPC error."""
    call = channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=None,
        response_deserializer=x_auth_pb2.CheckResponse.FromString,
    )
    response = await call(data, timeout=RPC_TIMEOUT)
    code, status, _, body = denied(response)
    assert (code, status, body["reason"]) == (3, 400, "request_malformed")
