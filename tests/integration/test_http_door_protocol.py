"""The HTTP door's own HTTP, behind the Envoy configuration we ship (deploy/envoy/render.py, door http).

One door (the shipped defaults: keep-alive bounds far above Envoy's, the memo
on) and one Envoy rendered for it, in front of the echo upstream, shared by the
module. Envoy's admin /stats tell whether the door kept Envoy's connections:
``cluster.authz.upstream_cx_total`` counts the connections Envoy opened to the
door, ``upstream_cx_protocol_error`` the ones it dropped over a malformed answer.

- HEAD: the answer carries no body (RFC 9110 §9.3.2), else Envoy counts the body
  as a protocol error and reconnects for every HEAD a client sends (issue 19, 3).
- Upgrades (CONNECT, ``Connection: upgrade`` with websocket or h2c) sent straight
  to the door: 400 and closed, never a fault out of ``data_received``; through
  Envoy, a websocket request is checked as a plain request (issue 19, 7).
- An answer that cannot be built: the client gets the deny it became, and the
  decision log and metrics say so (issue 19, 4).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import authz.http.wire
from authz.config import SnapshotHolder, load_config
from authz.core.decision import Decision
from authz.http.door import HttpDoor
from authz.http.protocol import RawHeaders
from authz.telemetry.recorder import Telemetry
from testkit.envoy import EchoUpstream, EnvoyProcess, http_request, raw_request, run_envoy
from testkit.world import CONFIG, NOW, World

pytestmark = pytest.mark.envoy

RENDER = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "render.py"
WAIT = 10.0  # bounds every socket read: a door that never answers fails the test instead of hanging it


def _render_module() -> ModuleType:
    name = "deploy_envoy_render"  # the name tests/deploy/test_deploy.py loads it under: one module either way
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RENDER)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


render = _render_module()
PREFIX = render.HTTP_PATH_PREFIX


@pytest.fixture(scope="module")
async def door(world: World, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HttpDoor]:
    """The HTTP door in-process, with the shipped defaults and the path prefix the rendered Envoy uses."""
    root = tmp_path_factory.mktemp("door")
    shutil.copytree(world.root / "keys", root / "keys")
    (root / "config.yaml").write_text(CONFIG + f"http:\n  path_prefix: {PREFIX}\n")
    config = load_config(root / "config.yaml")
    server = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(), config.http)
    server.port = await server.start("127.0.0.1:0")  # type: ignore[attr-defined]
    yield server
    await server.stop(1.0)


@pytest.fixture(scope="module")
async def stack(
    door: HttpDoor, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[EnvoyProcess, EchoUpstream]]:
    """Envoy from render.py's http-door config, plus websocket upgrades as a websocket service adds them."""
    with EchoUpstream() as upstream:
        params = render.Params(
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            authz=f"127.0.0.1:{door.port}",  # type: ignore[attr-defined]
            upstream=f"127.0.0.1:{upstream.port}",
            door="http",
        )
        config = render.render(params)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        # Without it Envoy refuses every upgrade itself (403, no check); with it, the check decides.
        hcm["upgrade_configs"] = [{"upgrade_type": "websocket"}]
        with run_envoy(config, tmp_path=tmp_path_factory.mktemp("envoy")) as envoy:
            yield envoy, upstream


def authz_cluster(envoy: EnvoyProcess) -> dict[str, int]:
    """Envoy's counters of its connections to the door (a counter never used is absent: 0)."""
    stats = envoy.stats(r"^cluster\.authz\.upstream_(cx_total|cx_protocol_error|rq_total)$")
    return {name.rsplit(".", 1)[1]: value for name, value in stats.items()}


async def send(envoy: EnvoyProcess, method: str, path: str, **headers: str) -> Any:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await asyncio.to_thread(
        http_request, envoy.port, method, path, host="api.acme.test", headers=named, timeout=WAIT
    )


# -- HEAD --------------------------------------------------------------------------


async def test_head_checks_keep_envoys_connection(stack, world: World) -> None:
    """Many HEADs through Envoy, denied and allowed: no protocol error, no new connection to the door."""
    envoy, upstream = stack
    token = world.token()
    assert (await send(envoy, "GET", "/orders")).status == 401  # a connection to the door, now open
    before = authz_cluster(envoy)
    cases = [
        ({}, 401),  # token_missing: a JSON body for GET
        ({"authorization": "Bearer a.b.c.d.e"}, 401),  # token_malformed
        ({"authorization": f"Bearer {token}"}, 200),  # allowed: the upstream answers the HEAD
    ]
    for _ in range(10):
        for headers, expected in cases:
            reply = await send(envoy, "HEAD", "/orders", **headers)
            assert (reply.status, reply.body) == (expected, b"")
        reply = await send(envoy, "HEAD", "/admin/users", authorization=f"Bearer {token}")
        assert (reply.status, reply.body) == (403, b"")
    # One more check after the last HEAD: were the connection dropped, this one would open another.
    assert (await send(envoy, "GET", "/orders")).status == 401
    after = authz_cluster(envoy)
    assert after.get("upstream_cx_protocol_error", 0) == 0
    assert after["upstream_cx_total"] == before["upstream_cx_total"]
    assert after["upstream_rq_total"] == before["upstream_rq_total"] + 41  # every HEAD was checked
    assert len([r for r in upstream.requests if r.method == "HEAD"]) >= 10


async def _read_response(reader: asyncio.StreamReader, *, head: bool) -> tuple[bytes, bytes]:
    """(header block, body) of one response, framed by content-length (no body after a HEAD)."""
    block = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = next(
        int(line.split(b":", 1)[1]) for line in block.split(b"\r\n") if line.startswith(b"content-length:")
    )
    body = b"" if head else await asyncio.wait_for(reader.readexactly(length), WAIT)
    return block, body


def _check(method: str, path: str, extra: str = "") -> bytes:
    return f"{method} {PREFIX}{path} HTTP/1.1\r\nhost: api.acme.test\r\nx-request-id: rid-h\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("path", ["/orders", "/orders%2Fadmin", "/admin/users"], ids=["401", "400", "403"])
async def test_head_answer_is_the_get_answer_without_its_body(door, world: World, path: str) -> None:
    """Straight to the door: a HEAD's status and headers, content-length included, are the GET's; no body.

    HEAD, then GET, then HEAD on one connection: each answer starts where the
    previous one's headers (HEAD) or body (GET) end, and the connection stays open.
    """
    token = f"authorization: Bearer {world.token()}\r\n" if path == "/admin/users" else ""
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    try:
        writer.write(_check("HEAD", path, token) + _check("GET", path, token) + _check("HEAD", path, token))
        head_block, _ = await _read_response(reader, head=True)
        get_block, body = await _read_response(reader, head=False)
        again, _ = await _read_response(reader, head=True)
        assert head_block == get_block == again
        assert json.loads(body)["request_id"] == "rid-h"
        assert b"\r\ncontent-length: 0\r\n" not in head_block
        assert b"connection: close" not in head_block
        with pytest.raises(TimeoutError):  # nothing more was sent, and nothing closed the connection
            await asyncio.wait_for(reader.read(1), 0.2)
    finally:
        writer.close()


async def test_head_allow_has_no_body_either(door, world: World) -> None:
    """An allowed HEAD: 200, content-length 0 (an allow has no body), the identity headers."""
    reply = await asyncio.to_thread(
        raw_request, door.port, _check("HEAD", "/orders", f"authorization: Bearer {world.token()}\r\n")
    )
    assert (reply.status, reply.header("content-length"), reply.body) == (200, "0", b"")
    assert reply.header("x-authz-subject") == "user-1"


# -- upgrades ----------------------------------------------------------------------

UPGRADES = {
    "websocket": "GET {p}/orders HTTP/1.1\r\nhost: api.acme.test\r\n{t}connection: Upgrade\r\nupgrade: websocket\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    "h2c": "GET {p}/orders HTTP/1.1\r\nhost: api.acme.test\r\n{t}connection: Upgrade, HTTP2-Settings\r\n"
    "upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "connect": "CONNECT api.acme.test:443 HTTP/1.1\r\nhost: api.acme.test:443\r\n{t}\r\n",
    "upgrade-with-body": "POST {p}/orders HTTP/1.1\r\nhost: api.acme.test\r\n{t}connection: upgrade\r\n"
    "upgrade: websocket\r\ncontent-length: 5\r\n\r\nhello",
}


async def _exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``; read until the door closes (or WAIT passes): (bytes, closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received, closed, deadline = b"", False, time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        writer.close()
    return received, closed


def _checks(door: HttpDoor) -> float:
    return sum(door.telemetry.checks.values.values())


@pytest.mark.parametrize("kind", list(UPGRADES))
async def test_upgrade_straight_to_the_door_is_400_and_closed(
    door, world: World, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """CONNECT or an Upgrade (websocket, h2c), even with a valid token: 400, connection: close, closed.

    Undecided (no check is recorded, but counted in authz_http_rejections_total), nothing logged
    as a fault (asyncio's "Fatal error" when httptools' HttpParserUpgrade escaped
    data_received) beyond the door's own line (at most one a second per cause), and the door
    serves the next connection.
    """
    caplog.set_level(logging.WARNING)
    request = UPGRADES[kind].format(p=PREFIX, t=f"authorization: Bearer {world.token()}\r\n")
    checks = _checks(door)
    rejected = door.telemetry.http_rejections.values.get(("400", "upgrade"), 0)
    received, closed = await _exchange(door.port, request.encode())
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nconnection: close" in head
    assert closed
    assert _checks(door) == checks
    assert door.telemetry.http_rejections.values[("400", "upgrade")] == rejected + 1
    ours = "http door refused a request and closed its connection"
    assert [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.getMessage() != ours
    ] == []
    reply = await asyncio.to_thread(raw_request, door.port, _check("GET", "/healthz"))
    assert reply.status == 200


async def test_upgrade_after_a_check_on_one_connection(door) -> None:
    """A check, then an upgrade request on the same connection: the check's 200, then the 400, then closed."""
    upgrade = UPGRADES["websocket"].format(p=PREFIX, t="")
    received, closed = await _exchange(door.port, _check("GET", "/healthz") + upgrade.encode())
    statuses = [line.split(b" ")[1] for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"200", b"400"]
    assert closed


async def test_websocket_through_envoy_is_checked_as_a_plain_request(
    stack, door, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's websocket handshake through Envoy: the door gets a plain GET (Envoy forwards only the
    allowed_headers, never Upgrade or Connection) and decides it; allowed, the upstream gets the upgrade
    request with our identity; without a token, our 401."""
    envoy, upstream = stack
    seen: list[tuple[bytes, RawHeaders]] = []
    answer_raw = door.answer_raw

    def recording(method: bytes, target: bytes, raw: RawHeaders) -> Any:
        seen.append((method, raw))
        return answer_raw(method, target, raw)

    monkeypatch.setattr(door, "answer_raw", recording)
    upstream.clear()
    token = f"authorization: Bearer {world.token()}\r\n"
    allowed = await asyncio.to_thread(
        raw_request, envoy.port, UPGRADES["websocket"].format(p="", t=token).encode()
    )
    assert allowed.status == 200  # the echo upstream answers 200 rather than switching
    (forwarded,) = upstream.requests
    assert forwarded.header("upgrade") == "websocket"
    assert forwarded.header("x-authz-subject") == "user-1"
    denied = await asyncio.to_thread(
        raw_request, envoy.port, UPGRADES["websocket"].format(p="", t="").encode()
    )
    assert (denied.status, denied.json()["reason"]) == (401, "token_missing")
    assert len(upstream.requests) == 1
    assert [method for method, _ in seen] == [b"GET", b"GET"]
    for _, raw in seen:
        names = {name.lower() for name, _ in raw}
        assert not names & {b"upgrade", b"connection", b"sec-websocket-key"}, names


# -- an answer that cannot be built --------------------------------------------------


async def test_unbuildable_answer_through_envoy_is_a_recorded_deny(
    stack, door, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An allow whose subject Latin-1 cannot carry: the client gets a deny (Envoy's 503 for our 500),
    the upstream nothing, the door records deny/internal_error, and Envoy keeps its connection."""
    envoy, upstream = stack
    real = authz.http.wire.to_http_response

    def unsendable(decision: Decision, *args: Any) -> Any:
        return real(replace(decision, subject="用户-1") if decision.subject else decision, *args)

    monkeypatch.setattr(authz.http.wire, "to_http_response", unsendable)
    caplog.set_level(logging.INFO, logger="authz.decision")
    assert (await send(envoy, "GET", "/orders")).status == 401  # the connection to the door, open
    before = authz_cluster(envoy)
    upstream.clear()
    # The rendered Envoy makes its own x-request-id: this check's line is found by its path.
    reply = await send(envoy, "GET", "/orders/unsendable", authorization=f"Bearer {world.token()}")
    # Envoy treats an authorization server's 5xx as a failed check, not a deny: it answers
    # the rendered status_on_error (503) without our body. The door's own answer is a clean
    # 500 on a connection that goes on (test_answer_failures.py reads it straight).
    assert (reply.status, reply.body) == (503, b"")
    assert upstream.requests == []
    (line,) = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "decision" and r.fields["path"] == "/orders/unsendable"  # type: ignore[attr-defined]
    ]
    assert (line["decision"], line["reason"], line["tenant"]) == ("deny", "internal_error", "acme")
    assert door.telemetry.checks.values[("acme", "deny", "internal_error")] == 1
    after = authz_cluster(envoy)
    assert after.get("upstream_cx_protocol_error", 0) == before.get("upstream_cx_protocol_error", 0)
    assert after["upstream_cx_total"] == before["upstream_cx_total"]
