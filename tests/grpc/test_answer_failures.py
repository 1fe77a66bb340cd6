"""An answer that cannot be built is the internal_error deny it became: answered and recorded, both doors.

The fault is the one issue 19 found (a subject Latin-1 cannot carry made the
HTTP door log an allow and answer 503 from a crashed connection): the real
renderers are wrapped to give every identity a subject their encoder refuses
(non-Latin-1 for the HTTP door's header bytes, a lone surrogate for the gRPC
door's protobuf strings), so the failure is the encoders' own, whatever claim
validation lets through. The doors run on real ports: the HTTP door with a raw
socket client, the gRPC server with a gRPC client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import authz.grpc.servicer
import authz.http.wire
from authz.config import Config, SnapshotHolder
from authz.core.decision import Decision, reject
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.messages import fallback_deny, to_check_response
from authz.grpc.server import run_server
from authz.grpc.servicer import check
from authz.http.door import HttpDoor
from authz.http.wire import internal_error, render, to_http_response
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import CHECK_SPAN, HTTP_SPAN
from testkit.world import NOW, World, check_request

NOT_LATIN_1 = "用户-1"  # issue 19's subject
LONE_SURROGATE = "\ud800"  # json.loads('"\\ud800"') gives one; protobuf cannot encode it
INTERNAL_BODY = {"error": "server_error", "reason": "internal_error"}
WAIT = 10.0  # bounds every socket read: a door that never answers fails the test instead of hanging it


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def unsendable_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP door's renderer, given a subject its Latin-1 header encoding cannot carry."""
    real = authz.http.wire.to_http_response

    def render(decision: Decision, *args: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        return real(replace(decision, subject=NOT_LATIN_1) if decision.subject else decision, *args)

    monkeypatch.setattr(authz.http.wire, "to_http_response", render)


@pytest.fixture
def unsendable_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gRPC door's renderer, given a subject protobuf cannot encode (UTF-8 refuses lone surrogates)."""
    real = authz.grpc.servicer.to_check_response

    def render(decision: Decision, *args: Any) -> CheckResponse:
        return real(replace(decision, subject=LONE_SURROGATE) if decision.subject else decision, *args)

    monkeypatch.setattr(authz.grpc.servicer, "to_check_response", render)


def decision_lines(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, Any]]:
    """The decision log's fields by request id."""
    return {
        r.fields["request_id"]: r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "authz.decision" and r.getMessage() == "decision"
    }


def counted(telemetry: Telemetry) -> dict[tuple[str, ...], float]:
    return {labels: value for labels, value in telemetry.checks.values.items() if value}


def recorded_as_internal_error(line: dict[str, Any], span: ReadableSpan | None = None) -> None:
    assert (line["decision"], line["reason"]) == ("deny", "internal_error")
    assert (line["tenant"], line["rule"]) == ("acme", "read-orders")
    assert line["detail"] == "building the answer failed (UnicodeEncodeError)"
    if span is not None:
        assert span.attributes is not None
        assert (span.attributes["authz.decision"], span.attributes["authz.reason"]) == (
            "deny",
            "internal_error",
        )
        assert span.status.status_code is StatusCode.ERROR


# -- the HTTP door -----------------------------------------------------------------


@pytest.fixture
async def traced_door(config: Config, provider: TracerProvider) -> AsyncIterator[tuple[HttpDoor, int]]:
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(provider), config.http)
    port = await door.start("127.0.0.1:0")
    yield door, port
    await door.stop(1.0)


def http_request(method: str, path: str, rid: str, token: str | None = None) -> bytes:
    authorization = f"authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {path} HTTP/1.1\r\nhost: api.acme.test\r\nx-request-id: {rid}\r\n{authorization}\r\n".encode()


async def read_answer(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One response off the connection, framed by its content-length (none after a HEAD)."""
    block = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = block.decode("latin-1").split("\r\n")[:-2]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = 0 if head else int(headers["content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    return int(lines[0].split(" ")[1]), headers, body


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_http_door_answers_and_records_the_deny_it_became(
    traced_door, world: World, exporter, caplog, unsendable_http, method: str
) -> None:
    """An allow whose subject cannot be sent: 500 internal_error to the client, and that is what is recorded.

    The decision log line, authz_checks_total and the span all say deny /
    internal_error (not the allow the decision was), and the connection goes on:
    the next request on it is answered (no crash, no 503 from a dead connection).
    """
    door, port = traced_door
    caplog.set_level(logging.INFO, logger="authz.decision")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request(method, "/orders", "rid-unsendable", world.token()))
        writer.write(http_request("GET", "/healthz", "rid-next"))  # public: no subject to render
        status, headers, body = await read_answer(reader, head=method == "HEAD")
        assert status == 500
        assert headers["content-type"] == "application/json"
        assert not any(name.startswith("x-authz-") for name in headers)
        expected = json.dumps({**INTERNAL_BODY, "request_id": "rid-unsendable"}).encode()
        assert int(headers["content-length"]) == len(expected)
        assert body == (b"" if method == "HEAD" else expected)
        assert (await read_answer(reader))[0] == 200  # the same connection answers on
    finally:
        writer.close()
    lines = decision_lines(caplog)
    (span,) = [
        s for s in exporter.get_finished_spans()
        if s.name == HTTP_SPAN and s.attributes and s.attributes.get("url.path") == "/orders"
    ]  # fmt: skip
    recorded_as_internal_error(lines["rid-unsendable"], span)
    assert lines["rid-next"]["decision"] == "allow"
    assert counted(door.telemetry) == {("acme", "deny", "internal_error"): 1, ("acme", "allow", "ok"): 1}
    assert door.telemetry.latency.series[("deny",)][-1] == 1  # authz_check_duration_seconds_count


def test_http_door_memo_never_keeps_the_deny(world: World, config: Config, caplog, unsendable_http) -> None:
    """Tracing off (the memo on): every repeat is decided afresh and recorded as the deny it became."""
    telemetry = Telemetry()
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), telemetry, config.http)
    caplog.set_level(logging.INFO, logger="authz.decision")
    raw = [(b"host", b"api.acme.test"), (b"authorization", f"Bearer {world.token()}".encode())]
    for attempt in range(3):
        answer = door.answer_raw(b"GET", b"/orders", [*raw, (b"x-request-id", b"rid-%d" % attempt)])
        assert isinstance(answer, bytes)
        assert answer.startswith(b"HTTP/1.1 500 ")
    assert (door.memo_entries, door.memo_hits) == (0, 0)
    assert counted(telemetry) == {("acme", "deny", "internal_error"): 3}
    for line in decision_lines(caplog).values():
        recorded_as_internal_error(line)


def test_http_door_memo_keeps_the_allow_once_it_can_be_sent(world: World, config: Config) -> None:
    """The same request, answered 200 (the memo's usual case): the deny above is not a lasting state."""
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(), config.http)
    raw = [(b"host", b"api.acme.test"), (b"authorization", f"Bearer {world.token()}".encode())]
    for _ in range(2):
        answer = door.answer_raw(b"GET", b"/orders", raw)
        assert isinstance(answer, bytes)
        assert answer.startswith(b"HTTP/1.1 200 ")
    assert (door.memo_entries, door.memo_hits) == (1, 1)


@pytest.mark.parametrize("rid", ["", "rid-1", 'ü☃"\\\x7f'])
@pytest.mark.parametrize("head", [False, True])
def test_http_fallback_is_the_rendered_internal_error(rid: str, head: bool) -> None:
    """The constant-built fallback is byte for byte what rendering reject("internal_error") gives."""
    status, headers, body = to_http_response(reject("internal_error"), rid)
    assert internal_error(rid, head=head) == render(status, headers, body, head=head)


# -- the gRPC door -----------------------------------------------------------------


@pytest.fixture
async def grpc_check(config: Config, provider: TracerProvider) -> AsyncIterator[tuple[Telemetry, Any]]:
    """A Check callable on the real gRPC server (real port), and the server's telemetry."""
    telemetry = Telemetry(provider)
    holder = SnapshotHolder(config)
    async with (
        run_server(holder, "127.0.0.1:0", config.server, clock=lambda: NOW, telemetry=telemetry) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        yield telemetry, call


async def test_grpc_door_answers_and_records_the_deny_it_became(
    grpc_check, world: World, exporter, caplog, unsendable_grpc
) -> None:
    """The same through the gRPC door: a denied 500 (INTERNAL) with our body, recorded as deny/internal_error."""
    telemetry, call = grpc_check
    caplog.set_level(logging.INFO, logger="authz.decision")
    response = await call(check_request(token=world.token(), request_id="rid-unsendable"), timeout=WAIT)
    assert response.status.code == 13
    assert response.denied_response.status.code == 500
    assert json.loads(response.denied_response.body) == {**INTERNAL_BODY, "request_id": "rid-unsendable"}
    metadata = {k: v.string_value for k, v in response.dynamic_metadata.fields.items()}
    assert metadata == {"decision": "deny", "reason": "internal_error"}
    (span,) = [s for s in exporter.get_finished_spans() if s.name == CHECK_SPAN]
    recorded_as_internal_error(decision_lines(caplog)["rid-unsendable"], span)
    assert counted(telemetry) == {("acme", "deny", "internal_error"): 1}


def test_library_check_records_the_deny_it_became(
    world: World, config: Config, caplog, unsendable_grpc
) -> None:
    """service.check (the library entry point) answers and records alike."""
    telemetry = Telemetry()
    caplog.set_level(logging.INFO, logger="authz.decision")
    message = check_request(token=world.token(), request_id="rid-lib")
    response = check(SnapshotHolder(config), message, lambda: float(NOW), telemetry)
    assert response.denied_response.status.code == 500
    recorded_as_internal_error(decision_lines(caplog)["rid-lib"])
    assert counted(telemetry) == {("acme", "deny", "internal_error"): 1}


@pytest.mark.parametrize("rid", ["", "rid-1", 'ü☃"\\\x7f'])
def test_grpc_fallback_is_the_built_internal_error(rid: str) -> None:
    """The constant-built fallback is the message to_check_response builds for reject("internal_error")."""
    assert fallback_deny(rid) == to_check_response(reject("internal_error"), rid)
